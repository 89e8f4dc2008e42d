//! Bootstrap: what a delegate process makes once at start-up in its store and data dir (the
//! local user with its `default` workspace, the server's instance id).

use crate::ids::{is_id, new_id, now_ms};
use crate::store::{Store, StoreError, User, Workspace};

/// This server's instance id, stored in the data dir (`instance-id`), made on first start. An
/// error names the file.
pub async fn instance_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("instance-id");
    let io = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    match tokio::fs::read_to_string(&path).await {
        Ok(id) if is_id("srv", id.trim()) => return Ok(id.trim().to_string()),
        Ok(_) | Err(_) => {}
    }
    tokio::fs::create_dir_all(data_dir).await.map_err(io)?;
    let id = new_id("srv");
    tokio::fs::write(&path, format!("{id}\n"))
        .await
        .map_err(io)?;
    Ok(id)
}

/// The local user and its `default` workspace, made on first start.
pub async fn ensure_local_user(store: &dyn Store) -> Result<(User, Workspace), StoreError> {
    let user = match store.user_by_email("local@delegate.invalid").await {
        Ok(u) => u,
        Err(StoreError::NotFound(_)) => {
            let u = User {
                id: new_id("usr"),
                email: "local@delegate.invalid".into(),
                name: "local".into(),
                created_at: now_ms(),
            };
            match store.create_user(&u).await {
                Ok(()) => u,
                // Another process made it first.
                Err(StoreError::Conflict(_)) => store.user_by_email(&u.email).await?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    match store.workspace_by_slug("default").await {
        Ok(ws) => return Ok((user, ws)),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let ws = Workspace {
        id: new_id("wsp"),
        slug: "default".into(),
        name: "Default".into(),
        created_at: now_ms(),
    };
    match store.create_workspace(&ws, &user.id).await {
        // The owner's membership comes with the workspace.
        Ok(()) => Ok((user, ws)),
        // Another process made it first.
        Err(StoreError::Conflict(_)) => Ok((user, store.workspace_by_slug("default").await?)),
        Err(e) => Err(e),
    }
}
