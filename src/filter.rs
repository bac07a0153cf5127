//! Which users (`[filter]`) and roles (`[role_filter]`) are watched, and how key ids are
//! shown (`[labels]`). Pure.

use crate::config::{FilterSettings, RoleFilterSettings};
use crate::inventory::{Inventory, Role};

#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    rules: Option<Rules>,
}

impl UserFilter {
    pub fn new(settings: &FilterSettings) -> UserFilter {
        UserFilter {
            rules: Rules::new(
                &settings.include_paths,
                &settings.exclude_paths,
                &settings.include_users,
                &settings.exclude_users,
            ),
        }
    }

    /// True when the user named `name`, with ARN `arn`, is watched: it matches an include
    /// (when there are any) and no exclude.
    pub fn allows(&self, name: &str, arn: &str) -> bool {
        self.rules
            .as_ref()
            .is_none_or(|rules| rules.allow(name, path_of(arn)))
    }

    /// Drops the users the filter does not allow. The root user is not an IAM user and
    /// always stays.
    pub fn apply(&self, inventory: &mut Inventory) {
        inventory.users.retain(|u| self.allows(&u.name, &u.arn));
    }
}

/// Which roles are watched: the same rules as users', by the role's path and name.
#[derive(Debug, Clone, Default)]
pub struct RoleFilter {
    rules: Option<Rules>,
}

impl RoleFilter {
    pub fn new(settings: &RoleFilterSettings) -> RoleFilter {
        RoleFilter {
            rules: Rules::new(
                &settings.include_paths,
                &settings.exclude_paths,
                &settings.include_roles,
                &settings.exclude_roles,
            ),
        }
    }

    pub fn allows(&self, role: &Role) -> bool {
        self.rules
            .as_ref()
            .is_none_or(|rules| rules.allow(&role.name, &role.path))
    }
}

/// Includes and excludes by IAM path prefix and by name pattern. Empty lists mean no
/// restriction; excludes win.
#[derive(Debug, Clone)]
struct Rules {
    include_paths: Vec<String>,
    exclude_paths: Vec<String>,
    include_names: Vec<String>,
    exclude_names: Vec<String>,
}

impl Rules {
    /// None when every list is empty: everything is watched.
    fn new(
        include_paths: &[String],
        exclude_paths: &[String],
        include_names: &[String],
        exclude_names: &[String],
    ) -> Option<Rules> {
        let empty = include_paths.is_empty()
            && exclude_paths.is_empty()
            && include_names.is_empty()
            && exclude_names.is_empty();
        (!empty).then(|| Rules {
            include_paths: include_paths.to_vec(),
            exclude_paths: exclude_paths.to_vec(),
            include_names: include_names.to_vec(),
            exclude_names: exclude_names.to_vec(),
        })
    }

    fn allow(&self, name: &str, path: &str) -> bool {
        let under = |prefixes: &[String]| prefixes.iter().any(|p| path.starts_with(p.as_str()));
        let named = |patterns: &[String]| patterns.iter().any(|p| glob(p, name));
        let included = (self.include_paths.is_empty() || under(&self.include_paths))
            && (self.include_names.is_empty() || named(&self.include_names));
        included && !under(&self.exclude_paths) && !named(&self.exclude_names)
    }
}

/// The IAM path in a user ARN: `arn:aws:iam::123456789012:user/eng/ops/alice` → `/eng/ops/`.
fn path_of(arn: &str) -> &str {
    let resource = arn.splitn(6, ':').nth(5).unwrap_or("");
    let Some(rest) = resource.strip_prefix("user") else {
        return "/";
    };
    match rest.rfind('/') {
        Some(end) if end > 0 => &rest[..=end],
        _ => "/",
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Key ids as `AKIA****WXYZ`: the kind and the last four characters, enough to tell a
/// user's keys apart and to find one in the console. Slot names stay as they are.
pub fn mask_key_ids(inventory: &mut Inventory) {
    let users = inventory
        .users
        .iter_mut()
        .chain(inventory.account.root.as_mut());
    for key in users.flat_map(|u| u.keys.iter_mut()) {
        if key.id.len() == 20 && key.id.is_ascii() {
            key.id = format!("{}****{}", &key.id[..4], &key.id[16..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ip: &[&str], ep: &[&str], iu: &[&str], eu: &[&str]) -> FilterSettings {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        FilterSettings {
            include_paths: v(ip),
            exclude_paths: v(ep),
            include_users: v(iu),
            exclude_users: v(eu),
        }
    }

    const ALICE: (&str, &str) = ("alice", "arn:aws:iam::123456789012:user/engineering/alice");
    const CI: (&str, &str) = ("ci-bot", "arn:aws:iam::123456789012:user/automation/ci-bot");
    const ROOTED: (&str, &str) = ("bob", "arn:aws:iam::123456789012:user/bob");

    #[test]
    fn paths_come_from_arns() {
        assert_eq!(path_of(ALICE.1), "/engineering/");
        assert_eq!(path_of(ROOTED.1), "/");
        assert_eq!(path_of("arn:aws:iam::123456789012:user/a/b/c"), "/a/b/");
        assert_eq!(path_of("arn:aws:iam::123456789012:root"), "/");
    }

    #[test]
    fn globs() {
        assert!(glob("ci-*", "ci-bot"));
        assert!(glob("*bot", "ci-bot"));
        assert!(glob("a?ice", "alice"));
        assert!(glob("*", ""));
        assert!(!glob("ci-*", "alice"));
        assert!(!glob("a?ice", "aalice"));
        assert!(glob("*-*-*", "a-b-c"));
    }

    #[test]
    fn includes_narrow_and_excludes_win() {
        let allows =
            |s: &FilterSettings, (name, arn): (&str, &str)| UserFilter::new(s).allows(name, arn);
        let none = settings(&[], &[], &[], &[]);
        assert!(allows(&none, ALICE) && allows(&none, CI) && allows(&none, ROOTED));
        let eng = settings(&["/engineering/"], &[], &[], &[]);
        assert!(allows(&eng, ALICE) && !allows(&eng, CI) && !allows(&eng, ROOTED));
        let no_bots = settings(&[], &[], &[], &["*-bot"]);
        assert!(allows(&no_bots, ALICE) && !allows(&no_bots, CI));
        let both = settings(&["/"], &["/automation/"], &["*"], &["bob"]);
        assert!(allows(&both, ALICE) && !allows(&both, CI) && !allows(&both, ROOTED));
    }

    #[test]
    fn roles_are_filtered_by_their_path_and_name() {
        let role = |name: &str, path: &str| Role {
            name: name.into(),
            arn: format!("arn:aws:iam::123456789012:role{path}{name}"),
            path: path.into(),
            created: std::time::UNIX_EPOCH,
            tags: vec![],
            last_used: None,
        };
        let linked = role(
            "AWSServiceRoleForSupport",
            "/aws-service-role/support.amazonaws.com/",
        );
        let deployer = role("deployer", "/apps/");
        let admin = role("OrganizationAccountAccessRole", "/");
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        let filter = |ip: &[&str], ep: &[&str], ir: &[&str], er: &[&str]| {
            RoleFilter::new(&RoleFilterSettings {
                include_paths: v(ip),
                exclude_paths: v(ep),
                include_roles: v(ir),
                exclude_roles: v(er),
            })
        };
        let all = filter(&[], &[], &[], &[]);
        assert!(all.allows(&linked) && all.allows(&deployer) && all.allows(&admin));
        let no_linked = filter(&[], &["/aws-service-role/"], &[], &[]);
        assert!(!no_linked.allows(&linked) && no_linked.allows(&deployer));
        let apps = filter(&["/apps/"], &[], &[], &[]);
        assert!(apps.allows(&deployer) && !apps.allows(&admin));
        let not_admin = filter(&[], &[], &[], &["Organization*"]);
        assert!(not_admin.allows(&deployer) && !not_admin.allows(&admin));
    }
}
