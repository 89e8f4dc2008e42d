//! Rebuild when a migration changes: `sqlx::migrate!` embeds the SQL files at compile time, and
//! cargo does not know about them otherwise (a stale copy fails with "migration N was previously
//! applied but has been modified").

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
