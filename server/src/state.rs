//! The run and sandbox state machines: every status change is checked here, in one place, before
//! the store's compare-and-set writes it. An illegal transition is an error, never a silent write.

use delegate_mcp::types::{RunStatus, SandboxStatus};

/// A status change the state machine does not allow; the caller's write never happens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {entity} transition {from} -> {to}")]
pub struct IllegalTransition {
    /// `"run"` or `"sandbox"`.
    pub entity: &'static str,
    /// The current status.
    pub from: String,
    /// The status that was asked for.
    pub to: String,
}

/// Whether a run may move from `from` to `to`.
pub fn run_transition(from: RunStatus, to: RunStatus) -> Result<(), IllegalTransition> {
    use RunStatus::*;
    let ok = match from {
        Queued => matches!(to, Starting | Failed | Cancelled | Lost),
        Starting => matches!(to, Running | Failed | Cancelled | TimedOut | Lost),
        Running => matches!(to, Succeeded | Failed | Cancelled | TimedOut | Lost),
        Succeeded | Failed | Cancelled | TimedOut | Lost => false,
    };
    if ok {
        Ok(())
    } else {
        Err(IllegalTransition {
            entity: "run",
            from: from.to_string(),
            to: to.to_string(),
        })
    }
}

/// Whether a sandbox may move from `from` to `to`.
pub fn sandbox_transition(from: SandboxStatus, to: SandboxStatus) -> Result<(), IllegalTransition> {
    use SandboxStatus::*;
    let ok = match from {
        Creating => matches!(to, Running | Failed | Deleting),
        Running => matches!(to, Pausing | Offline | Failed | Deleting),
        Pausing => matches!(to, Paused | Failed),
        Paused => matches!(to, Resuming | Deleting | Failed),
        Resuming => matches!(to, Running | Failed),
        Offline => matches!(to, Running | Deleting | Failed),
        Failed => matches!(to, Deleting),
        Deleting => matches!(to, Deleted | Failed),
        Deleted => false,
    };
    if ok {
        Ok(())
    } else {
        Err(IllegalTransition {
            entity: "sandbox",
            from: from.to_string(),
            to: to.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_runs_never_move() {
        for from in RunStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in RunStatus::ALL {
                assert!(run_transition(from, to).is_err(), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn the_happy_paths_are_legal() {
        use RunStatus::*;
        for (a, b) in [
            (Queued, Starting),
            (Starting, Running),
            (Running, Succeeded),
        ] {
            run_transition(a, b).unwrap();
        }
        assert!(run_transition(Queued, Succeeded).is_err());
        assert!(run_transition(Running, Queued).is_err());
        use SandboxStatus as S;
        for (a, b) in [
            (S::Creating, S::Running),
            (S::Running, S::Pausing),
            (S::Pausing, S::Paused),
            (S::Paused, S::Resuming),
            (S::Resuming, S::Running),
            (S::Running, S::Deleting),
            (S::Deleting, S::Deleted),
        ] {
            sandbox_transition(a, b).unwrap();
        }
        assert!(sandbox_transition(S::Deleted, S::Running).is_err());
        assert_eq!(
            sandbox_transition(S::Paused, S::Pausing)
                .unwrap_err()
                .to_string(),
            "illegal sandbox transition paused -> pausing"
        );
    }
}
