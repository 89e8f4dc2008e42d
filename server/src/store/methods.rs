//! The [`Store`](super::Store) methods, written once. Both drivers take the same SQL (`$N`
//! placeholders, identical schemas), so the SQLite and PostgreSQL stores expand these bodies over
//! their own pool type; a macro rather than generics because sqlx's `Database` bounds for `bind`
//! and `FromRow` across drivers would drown every method.

/// `impl_store!(SqliteStore, "sqlite", sqlx::Sqlite)`: implements `Store` for a struct with a `pool` field. The
/// invoking module imports what the bodies name.
macro_rules! impl_store {
    ($store:ident, $kind:literal, $db:ty) => {
        impl $store {
            /// Inserts `sandbox` through `executor`: the pool, or a transaction that checked a
            /// quota first.
            async fn insert_sandbox_on<'c, E>(executor: E, sandbox: &Sandbox) -> Result<()>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                sqlx::query(sql::INSERT_SANDBOX)
                    .bind(&sandbox.id)
                    .bind(&sandbox.workspace_id)
                    .bind(&sandbox.name)
                    .bind(sandbox.kind.as_str())
                    .bind(&sandbox.backend)
                    .bind(sandbox.status.as_str())
                    .bind(&sandbox.status_reason)
                    .bind(sandbox.idle_timeout_s)
                    .bind(sql::json_text(&sandbox.meta))
                    .bind(&sandbox.created_by)
                    .bind(sandbox.created_at)
                    .bind(sandbox.updated_at)
                    .bind(sql::base_text(sandbox.base.as_ref())?)
                    .execute(executor)
                    .await
                    .map_err(db_error("sandbox"))?;
                Ok(())
            }

            /// The status a compare-and-set found instead of the expected one, or `None` if the row is gone.
            async fn current_status(&self, query: &str, id: &str) -> Result<Option<String>> {
                sqlx::query_scalar::<_, String>(query)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("row"))
            }
        }

        #[async_trait]
        impl Store for $store {
            fn kind(&self) -> &'static str {
                $kind
            }

            async fn create_user(&self, user: &User) -> Result<()> {
                sqlx::query(sql::INSERT_USER)
                    .bind(&user.id)
                    .bind(&user.email)
                    .bind(&user.name)
                    .bind(user.created_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("user"))?;
                Ok(())
            }

            async fn user_by_id(&self, id: &str) -> Result<User> {
                let row = sqlx::query_as::<_, sql::UserRow>(sql::USER_BY_ID)
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("user"))?;
                Ok(row.into())
            }

            async fn user_by_email(&self, email: &str) -> Result<User> {
                let row = sqlx::query_as::<_, sql::UserRow>(sql::USER_BY_EMAIL)
                    .bind(email)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("user"))?;
                Ok(row.into())
            }

            async fn create_workspace(&self, ws: &Workspace, owner_user_id: &str) -> Result<()> {
                let mut tx = self.pool.begin().await.map_err(db_error("workspace"))?;
                sqlx::query(sql::INSERT_WORKSPACE)
                    .bind(&ws.id)
                    .bind(&ws.slug)
                    .bind(&ws.name)
                    .bind(ws.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("workspace"))?;
                sqlx::query(sql::UPSERT_MEMBER)
                    .bind(&ws.id)
                    .bind(owner_user_id)
                    .bind(Role::Owner.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("member"))?;
                tx.commit().await.map_err(db_error("workspace"))
            }

            async fn workspace_by_id(&self, id: &str) -> Result<Workspace> {
                let row = sqlx::query_as::<_, sql::WorkspaceRow>(sql::WORKSPACE_BY_ID)
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("workspace"))?;
                Ok(row.into())
            }

            async fn workspace_by_slug(&self, slug: &str) -> Result<Workspace> {
                let row = sqlx::query_as::<_, sql::WorkspaceRow>(sql::WORKSPACE_BY_SLUG)
                    .bind(slug)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("workspace"))?;
                Ok(row.into())
            }

            async fn workspaces_of_user(&self, user_id: &str) -> Result<Vec<(Workspace, Role)>> {
                sqlx::query_as::<_, sql::MembershipRow>(sql::WORKSPACES_OF_USER)
                    .bind(user_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("workspace"))?
                    .into_iter()
                    .map(sql::MembershipRow::into_membership)
                    .collect()
            }

            async fn set_member(
                &self,
                workspace_id: &str,
                user_id: &str,
                role: Role,
            ) -> Result<()> {
                sqlx::query(sql::UPSERT_MEMBER)
                    .bind(workspace_id)
                    .bind(user_id)
                    .bind(role.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("member"))?;
                Ok(())
            }

            async fn member_role(&self, workspace_id: &str, user_id: &str) -> Result<Option<Role>> {
                let role = sqlx::query_scalar::<_, String>(sql::MEMBER_ROLE)
                    .bind(workspace_id)
                    .bind(user_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("member"))?;
                role.as_deref().map(sql::parse_role).transpose()
            }

            async fn insert_sandbox(&self, sandbox: &Sandbox) -> Result<()> {
                Self::insert_sandbox_on(&self.pool, sandbox).await
            }

            async fn sandbox(&self, id: &str) -> Result<Sandbox> {
                sqlx::query_as::<_, sql::SandboxRow>(&sql::sandbox_by_id())
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("sandbox"))?
                    .into_sandbox()
            }

            async fn list_sandboxes(&self, workspace_id: &str) -> Result<Vec<Sandbox>> {
                sqlx::query_as::<_, sql::SandboxRow>(&sql::list_sandboxes())
                    .bind(workspace_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("sandbox"))?
                    .into_iter()
                    .map(sql::SandboxRow::into_sandbox)
                    .collect()
            }

            async fn sandboxes_with_status(
                &self,
                statuses: &[SandboxStatus],
            ) -> Result<Vec<Sandbox>> {
                if statuses.is_empty() {
                    return Ok(Vec::new());
                }
                let query = sql::sandboxes_with_status(statuses.len());
                let mut q = sqlx::query_as::<_, sql::SandboxRow>(&query);
                for s in statuses {
                    q = q.bind(s.as_str());
                }
                q.fetch_all(&self.pool)
                    .await
                    .map_err(db_error("sandbox"))?
                    .into_iter()
                    .map(sql::SandboxRow::into_sandbox)
                    .collect()
            }

            async fn set_sandbox_status(
                &self,
                id: &str,
                expected: SandboxStatus,
                next: SandboxStatus,
                reason: Option<&str>,
                now: Millis,
            ) -> Result<()> {
                let done = sqlx::query(sql::CAS_SANDBOX_STATUS)
                    .bind(next.as_str())
                    .bind(reason)
                    .bind(now)
                    .bind(id)
                    .bind(expected.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("sandbox"))?;
                if done.rows_affected() == 1 {
                    return Ok(());
                }
                let actual = self.current_status(sql::SANDBOX_STATUS, id).await?;
                Err(sql::stale_or_missing(
                    "sandbox",
                    id,
                    expected.as_str(),
                    actual,
                ))
            }

            async fn workspace_egress(&self, workspace_id: &str) -> Result<Option<Value>> {
                let text = sqlx::query_scalar::<_, Option<String>>(sql::WORKSPACE_EGRESS)
                    .bind(workspace_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("workspace"))?;
                text.map(|t| {
                    serde_json::from_str(&t).map_err(|e| sql::corrupt("workspace egress", e))
                })
                .transpose()
            }

            async fn set_workspace_egress(
                &self,
                workspace_id: &str,
                egress: Option<&Value>,
            ) -> Result<()> {
                let done = sqlx::query(sql::SET_WORKSPACE_EGRESS)
                    .bind(egress.map(sql::json_text))
                    .bind(workspace_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("workspace"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("workspace"));
                }
                Ok(())
            }

            async fn put_workspace_secret(
                &self,
                workspace_id: &str,
                name: &str,
                sealed: &str,
                updated_by: Option<&str>,
                now: Millis,
            ) -> Result<()> {
                sqlx::query(sql::PUT_WORKSPACE_SECRET)
                    .bind(workspace_id)
                    .bind(name)
                    .bind(sealed)
                    .bind(now)
                    .bind(updated_by)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("secret"))?;
                Ok(())
            }

            async fn workspace_secret(
                &self,
                workspace_id: &str,
                name: &str,
            ) -> Result<Option<String>> {
                sqlx::query_scalar::<_, String>(sql::WORKSPACE_SECRET)
                    .bind(workspace_id)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("secret"))
            }

            async fn workspace_secret_names(
                &self,
                workspace_id: &str,
            ) -> Result<Vec<(String, Millis)>> {
                sqlx::query_as::<_, (String, Millis)>(sql::WORKSPACE_SECRET_NAMES)
                    .bind(workspace_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("secret"))
            }

            async fn delete_workspace_secret(
                &self,
                workspace_id: &str,
                name: &str,
            ) -> Result<bool> {
                let done = sqlx::query(sql::DELETE_WORKSPACE_SECRET)
                    .bind(workspace_id)
                    .bind(name)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("secret"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn put_git_credential(
                &self,
                workspace_id: &str,
                host: &str,
                username: &str,
                sealed: &str,
                updated_by: Option<&str>,
                now: Millis,
            ) -> Result<()> {
                sqlx::query(sql::PUT_GIT_CREDENTIAL)
                    .bind(workspace_id)
                    .bind(host)
                    .bind(username)
                    .bind(sealed)
                    .bind(now)
                    .bind(updated_by)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("git credential"))?;
                Ok(())
            }

            async fn git_credential(
                &self,
                workspace_id: &str,
                host: &str,
            ) -> Result<Option<(String, String)>> {
                sqlx::query_as::<_, (String, String)>(sql::GIT_CREDENTIAL)
                    .bind(workspace_id)
                    .bind(host)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("git credential"))
            }

            async fn git_credentials(
                &self,
                workspace_id: &str,
            ) -> Result<Vec<super::GitCredentialInfo>> {
                sqlx::query_as::<_, super::GitCredentialInfo>(sql::GIT_CREDENTIALS)
                    .bind(workspace_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("git credential"))
            }

            async fn delete_git_credential(&self, workspace_id: &str, host: &str) -> Result<bool> {
                let done = sqlx::query(sql::DELETE_GIT_CREDENTIAL)
                    .bind(workspace_id)
                    .bind(host)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("git credential"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn expired_runs(&self, ended_before: Millis, limit: i64) -> Result<Vec<String>> {
                sqlx::query_scalar::<_, String>(sql::EXPIRED_RUNS)
                    .bind(ended_before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("run"))
            }

            async fn prune_run_events(&self, run_id: &str, limit: i64) -> Result<u64> {
                let done = sqlx::query(sql::PRUNE_RUN_EVENTS)
                    .bind(run_id)
                    .bind(limit)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("event"))?;
                Ok(done.rows_affected())
            }

            async fn delete_ended_run(&self, run_id: &str) -> Result<(u64, u64)> {
                let mut tx = self.pool.begin().await.map_err(db_error("run"))?;
                let usage = sqlx::query(sql::DELETE_RUN_USAGE)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("usage"))?
                    .rows_affected();
                let runs = sqlx::query(sql::DELETE_ENDED_RUN)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("run"))?
                    .rows_affected();
                if runs == 0 {
                    // Not there, or not ended: leave its usage alone too.
                    tx.rollback().await.map_err(db_error("run"))?;
                    return Ok((0, 0));
                }
                tx.commit().await.map_err(db_error("run"))?;
                Ok((runs, usage))
            }

            async fn prune_usage(&self, before: Millis, limit: i64) -> Result<u64> {
                let done = sqlx::query(sql::PRUNE_USAGE)
                    .bind(before)
                    .bind(limit)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("usage"))?;
                Ok(done.rows_affected())
            }

            async fn set_sandbox_meta(&self, id: &str, meta: &Value, now: Millis) -> Result<()> {
                let done = sqlx::query(sql::SET_SANDBOX_META)
                    .bind(sql::json_text(meta))
                    .bind(now)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("sandbox"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("sandbox"));
                }
                Ok(())
            }

            async fn insert_run(&self, run: &Run) -> Result<()> {
                let o = &run.outcome;
                sqlx::query(sql::INSERT_RUN)
                    .bind(&run.id)
                    .bind(&run.sandbox_id)
                    .bind(&run.workspace_id)
                    .bind(&run.task)
                    .bind(&run.model)
                    .bind(&run.agent)
                    .bind(run.status.as_str())
                    .bind(run.timeout_s)
                    .bind(&run.created_by)
                    .bind(run.created_at)
                    .bind(run.started_at)
                    .bind(run.finished_at)
                    .bind(&o.final_message)
                    .bind(sql::changed_files_text(&o.changed_files)?)
                    .bind(&o.diff)
                    .bind(o.diff_truncated)
                    .bind(to_i64(o.usage.input_tokens))
                    .bind(to_i64(o.usage.output_tokens))
                    .bind(to_i64(o.usage.cache_read_tokens))
                    .bind(to_i64(o.usage.cache_write_tokens))
                    .bind(o.usage.cost_usd)
                    .bind(o.error.as_ref().map(|e| e.kind.as_str()))
                    .bind(o.error.as_ref().map(|e| e.message.as_str()))
                    .bind(o.ttft_ms)
                    .bind(sql::base_text(o.base.as_ref())?)
                    .bind(&o.commit)
                    .bind(o.max_cost_usd)
                    .bind(&run.parent_run_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("run"))?;
                Ok(())
            }

            async fn run(&self, id: &str) -> Result<Run> {
                sqlx::query_as::<_, sql::RunRow>(&sql::run_by_id())
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("run"))?
                    .into_run()
            }

            async fn list_runs(
                &self,
                workspace_id: &str,
                sandbox_id: Option<&str>,
                limit: i64,
            ) -> Result<Vec<Run>> {
                let limit = limit.max(0);
                let rows = match sandbox_id {
                    Some(sandbox_id) => {
                        sqlx::query_as::<_, sql::RunRow>(&sql::list_sandbox_runs())
                            .bind(workspace_id)
                            .bind(sandbox_id)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await
                    }
                    None => {
                        sqlx::query_as::<_, sql::RunRow>(&sql::list_runs())
                            .bind(workspace_id)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await
                    }
                }
                .map_err(db_error("run"))?;
                rows.into_iter().map(sql::RunRow::into_run).collect()
            }

            async fn runs_with_status(&self, statuses: &[RunStatus]) -> Result<Vec<Run>> {
                if statuses.is_empty() {
                    return Ok(Vec::new());
                }
                let query = sql::runs_with_status(statuses.len());
                let mut q = sqlx::query_as::<_, sql::RunRow>(&query);
                for s in statuses {
                    q = q.bind(s.as_str());
                }
                q.fetch_all(&self.pool)
                    .await
                    .map_err(db_error("run"))?
                    .into_iter()
                    .map(sql::RunRow::into_run)
                    .collect()
            }

            async fn set_run_status(
                &self,
                id: &str,
                expected: RunStatus,
                next: RunStatus,
                now: Millis,
            ) -> Result<()> {
                let started_at = (next == RunStatus::Running).then_some(now);
                let done = sqlx::query(sql::CAS_RUN_STATUS)
                    .bind(next.as_str())
                    .bind(started_at)
                    .bind(id)
                    .bind(expected.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("run"))?;
                if done.rows_affected() == 1 {
                    return Ok(());
                }
                let actual = self.current_status(sql::RUN_STATUS, id).await?;
                Err(sql::stale_or_missing("run", id, expected.as_str(), actual))
            }

            async fn finish_run(
                &self,
                id: &str,
                expected: RunStatus,
                next: RunStatus,
                outcome: &RunOutcome,
                now: Millis,
            ) -> Result<()> {
                let o = outcome;
                let done = sqlx::query(sql::FINISH_RUN)
                    .bind(next.as_str())
                    .bind(now)
                    .bind(&o.final_message)
                    .bind(sql::changed_files_text(&o.changed_files)?)
                    .bind(&o.diff)
                    .bind(o.diff_truncated)
                    .bind(to_i64(o.usage.input_tokens))
                    .bind(to_i64(o.usage.output_tokens))
                    .bind(to_i64(o.usage.cache_read_tokens))
                    .bind(to_i64(o.usage.cache_write_tokens))
                    .bind(o.usage.cost_usd)
                    .bind(o.error.as_ref().map(|e| e.kind.as_str()))
                    .bind(o.error.as_ref().map(|e| e.message.as_str()))
                    .bind(o.ttft_ms)
                    .bind(&o.commit)
                    .bind(id)
                    .bind(expected.as_str())
                    .bind(o.egress.map(|e| sql::json_text(&serde_json::json!(e))))
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("run"))?;
                if done.rows_affected() == 1 {
                    return Ok(());
                }
                let actual = self.current_status(sql::RUN_STATUS, id).await?;
                Err(sql::stale_or_missing("run", id, expected.as_str(), actual))
            }

            async fn append_events(&self, events: &[NewEvent]) -> Result<()> {
                if events.is_empty() {
                    return Ok(());
                }
                // Dropping the transaction on an error rolls the whole batch back.
                let mut tx = self.pool.begin().await.map_err(db_error("event"))?;
                for e in events {
                    sqlx::query(sql::INSERT_EVENT)
                        .bind(&e.run_id)
                        .bind(to_i64(e.seq))
                        .bind(e.ts)
                        .bind(&e.kind)
                        .bind(sql::json_text(&e.data))
                        .bind(e.raw.as_ref().map(sql::json_text))
                        .execute(&mut *tx)
                        .await
                        .map_err(db_error("event"))?;
                }
                tx.commit().await.map_err(db_error("event"))
            }

            async fn events_after(
                &self,
                run_id: &str,
                after: u64,
                limit: i64,
            ) -> Result<Vec<Event>> {
                sqlx::query_as::<_, sql::EventRow>(sql::EVENTS_AFTER)
                    .bind(run_id)
                    .bind(to_i64(after))
                    .bind(limit.max(0))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("event"))?
                    .into_iter()
                    .map(sql::EventRow::into_event)
                    .collect()
            }

            async fn event_count(&self, run_id: &str) -> Result<u64> {
                let n = sqlx::query_scalar::<_, i64>(sql::EVENT_COUNT)
                    .bind(run_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("event"))?;
                Ok(sql::to_u64(n))
            }

            async fn insert_token(&self, token: &TokenRecord) -> Result<()> {
                sqlx::query(sql::INSERT_TOKEN)
                    .bind(&token.id)
                    .bind(token.kind.as_str())
                    .bind(&token.hash)
                    .bind(&token.name)
                    .bind(&token.user_id)
                    .bind(&token.sandbox_id)
                    .bind(&token.workspace_id)
                    .bind(token.created_at)
                    .bind(token.expires_at)
                    .bind(token.revoked_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("token"))?;
                Ok(())
            }

            async fn claim_token(
                &self,
                hash: &str,
                kind: super::TokenKind,
                now: Millis,
            ) -> Result<TokenRecord> {
                sqlx::query_as::<_, sql::TokenRow>(sql::CLAIM_TOKEN)
                    .bind(now)
                    .bind(hash)
                    .bind(kind.as_str())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("token"))?
                    .into_token()
            }

            async fn token_by_hash(&self, hash: &str) -> Result<TokenRecord> {
                sqlx::query_as::<_, sql::TokenRow>(sql::TOKEN_BY_HASH)
                    .bind(hash)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("token"))?
                    .into_token()
            }

            async fn revoke_token(&self, id: &str, now: Millis) -> Result<()> {
                let done = sqlx::query(sql::REVOKE_TOKEN)
                    .bind(now)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("token"))?;
                if done.rows_affected() == 1 {
                    return Ok(());
                }
                // Revoking a revoked token is fine; revoking an unknown one is not.
                let exists = sqlx::query_scalar::<_, i64>(sql::TOKEN_EXISTS)
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("token"))?;
                if exists == 0 {
                    return Err(StoreError::NotFound("token"));
                }
                Ok(())
            }

            async fn revoke_sandbox_tokens(&self, sandbox_id: &str, now: Millis) -> Result<()> {
                sqlx::query(sql::REVOKE_SANDBOX_TOKENS)
                    .bind(now)
                    .bind(sandbox_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("token"))?;
                Ok(())
            }

            async fn tokens_of_user(&self, user_id: &str) -> Result<Vec<TokenRecord>> {
                sqlx::query_as::<_, sql::TokenRow>(sql::TOKENS_OF_USER)
                    .bind(user_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("token"))?
                    .into_iter()
                    .map(sql::TokenRow::into_token)
                    .collect()
            }

            async fn record_usage(&self, record: &UsageRecord) -> Result<()> {
                let u: &Usage = &record.usage;
                sqlx::query(sql::INSERT_USAGE)
                    .bind(&record.id)
                    .bind(&record.sandbox_id)
                    .bind(&record.run_id)
                    .bind(&record.workspace_id)
                    .bind(&record.model)
                    .bind(to_i64(u.input_tokens))
                    .bind(to_i64(u.output_tokens))
                    .bind(to_i64(u.cache_read_tokens))
                    .bind(to_i64(u.cache_write_tokens))
                    .bind(u.cost_usd)
                    .bind(record.status_code)
                    .bind(record.ttft_ms)
                    .bind(record.duration_ms)
                    .bind(record.created_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("usage"))?;
                Ok(())
            }

            async fn run_usage(&self, run_id: &str) -> Result<(Usage, Option<i64>)> {
                let row = sqlx::query_as::<_, sql::UsageSumRow>(sql::RUN_USAGE)
                    .bind(run_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("usage"))?;
                Ok(sql::usage_from_sums(row))
            }

            async fn workspace_usage(&self, workspace_id: &str) -> Result<(Usage, u64)> {
                let row = sqlx::query_as::<_, sql::UsageSumRow>(sql::WORKSPACE_USAGE)
                    .bind(workspace_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("usage"))?;
                let (usage, runs) = sql::usage_from_sums(row);
                Ok((usage, sql::to_u64(runs.unwrap_or(0))))
            }

            async fn workspace_spend_since(
                &self,
                workspace_id: &str,
                since: Millis,
            ) -> Result<f64> {
                sqlx::query_scalar::<_, f64>(sql::WORKSPACE_SPEND_SINCE)
                    .bind(workspace_id)
                    .bind(since)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("usage"))
            }

            async fn workspace_limits(&self, workspace_id: &str) -> Result<WorkspaceLimits> {
                let row =
                    sqlx::query_as::<_, (Option<f64>, Option<f64>, Option<i64>, Option<i64>)>(
                        sql::WORKSPACE_LIMITS,
                    )
                    .bind(workspace_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("workspace limits"))?;
                Ok(match row {
                    Some((run, day, runs, warm)) => WorkspaceLimits {
                        max_run_cost_usd: run,
                        daily_budget_usd: day,
                        max_concurrent_runs: runs.map(sql::to_u64),
                        max_warm_sandboxes: warm.map(sql::to_u64),
                    },
                    None => WorkspaceLimits::default(),
                })
            }

            async fn set_workspace_limits(
                &self,
                workspace_id: &str,
                limits: &WorkspaceLimits,
                updated_by: Option<&str>,
                now: Millis,
            ) -> Result<()> {
                sqlx::query(sql::PUT_WORKSPACE_LIMITS)
                    .bind(workspace_id)
                    .bind(limits.max_run_cost_usd)
                    .bind(limits.daily_budget_usd)
                    .bind(limits.max_concurrent_runs.map(to_i64))
                    .bind(limits.max_warm_sandboxes.map(to_i64))
                    .bind(now)
                    .bind(updated_by)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("workspace limits"))?;
                Ok(())
            }

            async fn admit_run(
                &self,
                run_id: &str,
                max_running: Option<u64>,
                now: Millis,
            ) -> Result<bool> {
                let Some(max) = max_running else {
                    // No quota: nothing to count, and one statement is atomic by itself.
                    let done = sqlx::query(sql::ADMIT_RUN)
                        .bind(now)
                        .bind(run_id)
                        .execute(&self.pool)
                        .await
                        .map_err(db_error("run"))?;
                    return Ok(done.rows_affected() == 1);
                };
                let Some((workspace_id, created_at, waiting)) =
                    sqlx::query_as::<_, (String, i64, bool)>(sql::RUN_WAITING)
                        .bind(run_id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_error("run"))?
                else {
                    return Ok(false);
                };
                if !waiting {
                    return Ok(false);
                }
                // Dropping the transaction on any early return rolls it back.
                let mut tx = self.pool.begin().await.map_err(db_error("run"))?;
                sqlx::query(sql::LOCK_WORKSPACE)
                    .bind(&workspace_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("workspace"))?;
                let admitted = sqlx::query_scalar::<_, i64>(sql::WORKSPACE_ADMITTED_RUNS)
                    .bind(&workspace_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error("run"))?;
                let ahead = sqlx::query_scalar::<_, i64>(sql::WAITING_AHEAD)
                    .bind(&workspace_id)
                    .bind(created_at)
                    .bind(run_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error("run"))?;
                if sql::to_u64(admitted) + sql::to_u64(ahead) >= max {
                    return Ok(false);
                }
                let done = sqlx::query(sql::ADMIT_RUN)
                    .bind(now)
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("run"))?;
                tx.commit().await.map_err(db_error("run"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn queue_position(&self, run_id: &str) -> Result<Option<u64>> {
                let Some((workspace_id, created_at, waiting)) =
                    sqlx::query_as::<_, (String, i64, bool)>(sql::RUN_WAITING)
                        .bind(run_id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_error("run"))?
                else {
                    return Ok(None);
                };
                if !waiting {
                    return Ok(None);
                }
                let ahead = sqlx::query_scalar::<_, i64>(sql::WAITING_AHEAD)
                    .bind(&workspace_id)
                    .bind(created_at)
                    .bind(run_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("run"))?;
                Ok(Some(sql::to_u64(ahead) + 1))
            }

            async fn insert_warm_sandbox(
                &self,
                sandbox: &Sandbox,
                max_warm: u64,
            ) -> Result<Option<u64>> {
                let mut tx = self.pool.begin().await.map_err(db_error("sandbox"))?;
                sqlx::query(sql::LOCK_WORKSPACE)
                    .bind(&sandbox.workspace_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("workspace"))?;
                let warm = sqlx::query_scalar::<_, i64>(sql::WORKSPACE_WARM_SANDBOXES)
                    .bind(&sandbox.workspace_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error("sandbox"))?;
                let warm = sql::to_u64(warm);
                if warm >= max_warm {
                    return Ok(Some(warm));
                }
                Self::insert_sandbox_on(&mut *tx, sandbox).await?;
                tx.commit().await.map_err(db_error("sandbox"))?;
                Ok(None)
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query_scalar::<_, i64>(sql::PING)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("ping"))?;
                Ok(())
            }

            async fn status_counts(&self) -> Result<super::StatusCounts> {
                let runs = sqlx::query_as::<_, (String, i64)>(sql::RUN_STATUS_COUNTS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("run"))?
                    .into_iter()
                    .map(|(s, n)| Ok((sql::parse_run_status(&s)?, sql::to_u64(n))))
                    .collect::<Result<Vec<_>>>()?;
                let sandboxes = sqlx::query_as::<_, (String, i64)>(sql::SANDBOX_STATUS_COUNTS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("sandbox"))?
                    .into_iter()
                    .map(|(s, n)| Ok((sql::parse_sandbox_status(&s)?, sql::to_u64(n))))
                    .collect::<Result<Vec<_>>>()?;
                let proxy_requests = sqlx::query_scalar::<_, i64>(sql::USAGE_COUNT)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("usage"))?;
                Ok(super::StatusCounts {
                    runs,
                    sandboxes,
                    proxy_requests: sql::to_u64(proxy_requests),
                })
            }

            // ---- Multi-server
            async fn request_cancel(&self, run_id: &str, now: Millis) -> Result<bool> {
                let done = sqlx::query(sql::REQUEST_CANCEL)
                    .bind(now)
                    .bind(run_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("run"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn cancel_requested(&self, run_ids: &[String]) -> Result<Vec<String>> {
                if run_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let query = sql::cancel_requested(run_ids.len());
                let mut q = sqlx::query_scalar::<_, String>(&query);
                for id in run_ids {
                    q = q.bind(id);
                }
                q.fetch_all(&self.pool).await.map_err(db_error("run"))
            }

            async fn event_counts(&self, run_ids: &[String]) -> Result<Vec<(String, u64)>> {
                if run_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let query = sql::event_counts(run_ids.len());
                let mut q = sqlx::query_as::<_, (String, i64)>(&query);
                for id in run_ids {
                    q = q.bind(id);
                }
                Ok(q.fetch_all(&self.pool)
                    .await
                    .map_err(db_error("event"))?
                    .into_iter()
                    .map(|(id, n)| (id, sql::to_u64(n)))
                    .collect())
            }

            // ---- Attempts

            async fn runs_of_parents(&self, parents: &[String]) -> Result<Vec<Run>> {
                if parents.is_empty() {
                    return Ok(Vec::new());
                }
                let query = sql::runs_of_parents(parents.len());
                let mut q = sqlx::query_as::<_, sql::RunRow>(&query);
                for id in parents {
                    q = q.bind(id);
                }
                q.fetch_all(&self.pool)
                    .await
                    .map_err(db_error("run"))?
                    .into_iter()
                    .map(sql::RunRow::into_run)
                    .collect()
            }

            // ---- Accounts

            async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<()> {
                let done = sqlx::query(sql::SET_PASSWORD_HASH)
                    .bind(hash)
                    .bind(user_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("user"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("user"));
                }
                Ok(())
            }

            async fn password_hash(&self, user_id: &str) -> Result<Option<String>> {
                sqlx::query_scalar::<_, Option<String>>(sql::PASSWORD_HASH)
                    .bind(user_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("user"))
            }

            async fn workspace_members(&self, workspace_id: &str) -> Result<Vec<(User, Role)>> {
                sqlx::query_as::<_, sql::MemberRow>(sql::WORKSPACE_MEMBERS)
                    .bind(workspace_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("member"))?
                    .into_iter()
                    .map(sql::MemberRow::into_member)
                    .collect()
            }

            async fn change_member_role(
                &self,
                workspace_id: &str,
                user_id: &str,
                role: Role,
            ) -> Result<()> {
                let done = sqlx::query(sql::CHANGE_MEMBER_ROLE)
                    .bind(workspace_id)
                    .bind(user_id)
                    .bind(role.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("member"))?;
                if done.rows_affected() == 1 {
                    return Ok(());
                }
                match self.member_role(workspace_id, user_id).await? {
                    None => Err(StoreError::NotFound("member")),
                    Some(_) => Err(StoreError::Conflict(
                        "the last owner of a workspace can not be demoted".into(),
                    )),
                }
            }

            async fn remove_member(&self, workspace_id: &str, user_id: &str) -> Result<()> {
                let done = sqlx::query(sql::REMOVE_MEMBER)
                    .bind(workspace_id)
                    .bind(user_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("member"))?;
                if done.rows_affected() == 1 {
                    return Ok(());
                }
                match self.member_role(workspace_id, user_id).await? {
                    None => Err(StoreError::NotFound("member")),
                    Some(_) => Err(StoreError::Conflict(
                        "the last owner of a workspace can not be removed".into(),
                    )),
                }
            }

            async fn insert_invite(&self, invite: &super::Invite) -> Result<()> {
                sqlx::query(sql::INSERT_INVITE)
                    .bind(&invite.id)
                    .bind(&invite.hash)
                    .bind(&invite.workspace_id)
                    .bind(invite.role.as_str())
                    .bind(&invite.created_by)
                    .bind(invite.created_at)
                    .bind(invite.expires_at)
                    .bind(invite.used_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("invite"))?;
                Ok(())
            }

            async fn claim_invite(&self, hash: &str, now: Millis) -> Result<super::Invite> {
                sqlx::query_as::<_, sql::InviteRow>(sql::CLAIM_INVITE)
                    .bind(now)
                    .bind(hash)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("invite"))?
                    .into_invite()
            }

            async fn sessions_of_user(&self, user_id: &str) -> Result<Vec<TokenRecord>> {
                sqlx::query_as::<_, sql::TokenRow>(sql::SESSIONS_OF_USER)
                    .bind(user_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("token"))?
                    .into_iter()
                    .map(sql::TokenRow::into_token)
                    .collect()
            }

            // ---- Identities
            async fn identity(&self, provider: &str, subject: &str) -> Result<super::Identity> {
                let row = sqlx::query_as::<_, sql::IdentityRow>(sql::IDENTITY)
                    .bind(provider)
                    .bind(subject)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("identity"))?;
                Ok(row.into())
            }

            async fn insert_identity(&self, identity: &super::Identity) -> Result<()> {
                sqlx::query(sql::INSERT_IDENTITY)
                    .bind(&identity.provider)
                    .bind(&identity.subject)
                    .bind(&identity.user_id)
                    .bind(&identity.email)
                    .bind(identity.email_verified)
                    .bind(identity.created_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("identity"))?;
                Ok(())
            }

            async fn identities_of_user(&self, user_id: &str) -> Result<Vec<super::Identity>> {
                Ok(
                    sqlx::query_as::<_, sql::IdentityRow>(sql::IDENTITIES_OF_USER)
                        .bind(user_id)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db_error("identity"))?
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                )
            }

            async fn insert_sso_login(
                &self,
                login: &super::SsoLogin,
                expired_before: Millis,
                max_pending: u64,
                max_per_client: u64,
            ) -> Result<bool> {
                let mut tx = self.pool.begin().await.map_err(db_error("sign-in"))?;
                sqlx::query(sql::PRUNE_SSO_LOGINS)
                    .bind(expired_before)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("sign-in"))?;
                let pending = sqlx::query_scalar::<_, i64>(sql::COUNT_SSO_LOGINS)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error("sign-in"))?;
                let of_client = sqlx::query_scalar::<_, i64>(sql::COUNT_SSO_LOGINS_OF_CLIENT)
                    .bind(&login.client_hash)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error("sign-in"))?;
                if sql::to_u64(pending) >= max_pending || sql::to_u64(of_client) >= max_per_client {
                    tx.commit().await.map_err(db_error("sign-in"))?;
                    return Ok(false);
                }
                sqlx::query(sql::INSERT_SSO_LOGIN)
                    .bind(&login.state_hash)
                    .bind(&login.provider)
                    .bind(&login.browser_hash)
                    .bind(&login.return_to)
                    .bind(login.created_at)
                    .bind(&login.client_hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("sign-in"))?;
                tx.commit().await.map_err(db_error("sign-in"))?;
                Ok(true)
            }

            async fn take_sso_login(&self, state_hash: &str) -> Result<super::SsoLogin> {
                let row = sqlx::query_as::<_, sql::SsoLoginRow>(sql::TAKE_SSO_LOGIN)
                    .bind(state_hash)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("sign-in"))?;
                Ok(row.into())
            }

            // ---- Ownership
            async fn set_run_owner(&self, run_id: &str, owner: &str) -> Result<()> {
                sqlx::query(sql::SET_RUN_OWNER)
                    .bind(owner)
                    .bind(run_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("run"))?;
                Ok(())
            }

            async fn set_sandbox_owner(&self, sandbox_id: &str, owner: &str) -> Result<()> {
                sqlx::query(sql::SET_SANDBOX_OWNER)
                    .bind(owner)
                    .bind(sandbox_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("sandbox"))?;
                Ok(())
            }

            async fn sandbox_owner(&self, sandbox_id: &str) -> Result<Option<String>> {
                sqlx::query_scalar::<_, Option<String>>(sql::SANDBOX_OWNER)
                    .bind(sandbox_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error("sandbox"))?
                    .ok_or(StoreError::NotFound("sandbox"))
            }

            async fn runs_owned_with_status(
                &self,
                owner: &str,
                statuses: &[RunStatus],
            ) -> Result<Vec<Run>> {
                if statuses.is_empty() {
                    return Ok(Vec::new());
                }
                let query = sql::runs_owned_with_status(statuses.len());
                let mut q = sqlx::query_as::<_, sql::RunRow>(&query).bind(owner);
                for s in statuses {
                    q = q.bind(s.as_str());
                }
                q.fetch_all(&self.pool)
                    .await
                    .map_err(db_error("run"))?
                    .into_iter()
                    .map(sql::RunRow::into_run)
                    .collect()
            }

            async fn sandboxes_owned_with_status(
                &self,
                owner: &str,
                statuses: &[SandboxStatus],
            ) -> Result<Vec<Sandbox>> {
                if statuses.is_empty() {
                    return Ok(Vec::new());
                }
                let query = sql::sandboxes_owned_with_status(statuses.len());
                let mut q = sqlx::query_as::<_, sql::SandboxRow>(&query).bind(owner);
                for s in statuses {
                    q = q.bind(s.as_str());
                }
                q.fetch_all(&self.pool)
                    .await
                    .map_err(db_error("sandbox"))?
                    .into_iter()
                    .map(sql::SandboxRow::into_sandbox)
                    .collect()
            }

            async fn set_email_verified(&self, user_id: &str, verified: bool) -> Result<()> {
                let done = sqlx::query(sql::SET_EMAIL_VERIFIED)
                    .bind(verified)
                    .bind(user_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("user"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("user"));
                }
                Ok(())
            }

            async fn email_verified(&self, user_id: &str) -> Result<bool> {
                sqlx::query_scalar::<_, bool>(sql::EMAIL_VERIFIED)
                    .bind(user_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("user"))
            }

            async fn invites_of_workspace(&self, workspace_id: &str) -> Result<Vec<super::Invite>> {
                sqlx::query_as::<_, sql::InviteRow>(sql::INVITES_OF_WORKSPACE)
                    .bind(workspace_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error("invite"))?
                    .into_iter()
                    .map(sql::InviteRow::into_invite)
                    .collect()
            }

            async fn delete_invite(&self, workspace_id: &str, id: &str) -> Result<()> {
                let done = sqlx::query(sql::DELETE_INVITE)
                    .bind(workspace_id)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("invite"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("invite"));
                }
                Ok(())
            }

            async fn revoke_member_tokens(
                &self,
                workspace_id: &str,
                user_id: &str,
                now: Millis,
            ) -> Result<u64> {
                let done = sqlx::query(sql::REVOKE_MEMBER_TOKENS)
                    .bind(now)
                    .bind(workspace_id)
                    .bind(user_id)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error("token"))?;
                Ok(done.rows_affected())
            }

            async fn sso_browser_pending(&self, browser_hash: &str, since: Millis) -> Result<bool> {
                let n = sqlx::query_scalar::<_, i64>(sql::SSO_BROWSER_PENDING)
                    .bind(browser_hash)
                    .bind(since)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error("sign-in"))?;
                Ok(n > 0)
            }
        }
    };
}

pub(super) use impl_store;
