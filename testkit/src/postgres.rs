//! Throwaway PostgreSQL servers for tests.
