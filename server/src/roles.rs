//! What each workspace role may do, in one place: owner > maintainer > developer > guest.
//! [`crate::delegation::Service::authorize`] and the member routes ask [`allows`] and
//! [`may_assign`]; nothing else compares roles.

use crate::store::Role;

/// What a call wants to do in a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See the workspace, its members, sandboxes, runs, events and usage.
    Read,
    /// Start and cancel runs; create, pause, resume and delete sandboxes.
    Write,
    /// Add, change and remove members (below the caller's own rank unless owner).
    ManageMembers,
    /// Create invite codes.
    Invite,
}

/// Whether `role` may do `action` at all (member changes are further limited by [`may_assign`]).
pub fn allows(role: Role, action: Action) -> bool {
    let least = match action {
        Action::Read => Role::Guest,
        Action::Write => Role::Developer,
        Action::ManageMembers | Action::Invite => Role::Maintainer,
    };
    role >= least
}

/// Whether `actor` may move a member from `from` (`None`: not a member yet) to `to` (`None`:
/// removed). Owners may do anything (the last-owner rule is the store's, atomically);
/// maintainers only below maintainer, on both sides.
pub fn may_assign(actor: Role, from: Option<Role>, to: Option<Role>) -> bool {
    if !allows(actor, Action::ManageMembers) {
        return false;
    }
    if actor == Role::Owner {
        return true;
    }
    let below = |r: Option<Role>| r.is_none_or(|r| r < Role::Maintainer);
    below(from) && below(to)
}

/// Whether `actor` may create (or, when claimed, still stand behind) an invite with `role`: like
/// adding a member, and never as owner (an owner is made by an owner, by hand, not by a code that
/// can be passed on).
pub fn may_invite(actor: Role, role: Role) -> bool {
    allows(actor, Action::Invite) && role < Role::Owner && may_assign(actor, None, Some(role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_table() {
        use Action::*;
        use Role::*;
        let table = [
            (Guest, [true, false, false, false]),
            (Developer, [true, true, false, false]),
            (Maintainer, [true, true, true, true]),
            (Owner, [true, true, true, true]),
        ];
        for (role, expected) in table {
            let got = [Read, Write, ManageMembers, Invite].map(|a| allows(role, a));
            assert_eq!(got, expected, "{role:?}");
        }
        assert!(may_assign(Maintainer, None, Some(Developer)));
        assert!(may_assign(Maintainer, Some(Guest), None));
        assert!(!may_assign(Maintainer, Some(Developer), Some(Maintainer)));
        assert!(!may_assign(Maintainer, Some(Maintainer), None));
        assert!(!may_assign(Developer, None, Some(Guest)));
        assert!(may_assign(Owner, Some(Owner), Some(Guest)));
        assert!(may_invite(Owner, Maintainer));
        assert!(!may_invite(Owner, Owner));
        assert!(may_invite(Maintainer, Developer));
        assert!(!may_invite(Maintainer, Maintainer));
        assert!(!may_invite(Developer, Guest));
    }
}
