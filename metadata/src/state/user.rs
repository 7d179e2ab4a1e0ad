//! S3 users, access keys and bucket policies.

use super::State;
use crate::error::MetaError;
use cairn_proto::msg::MetaResult;
use cairn_proto::user::{
    validate_bucket_name, validate_key, validate_user_name, AccessKey, UserCommand, UserInfo,
};

/// Most users, and most keys per user, the metadata service keeps.
const MAX_USERS: usize = 10_000;
const MAX_KEYS_PER_USER: usize = 16;

pub fn validate(c: &UserCommand) -> Result<(), MetaError> {
    match c {
        UserCommand::CreateUser { name, .. } | UserCommand::RemoveUser { name } => {
            validate_user_name(name).map_err(MetaError::invalid)
        }
        UserCommand::AddKey {
            user,
            access_key,
            secret,
        } => {
            validate_user_name(user).map_err(MetaError::invalid)?;
            validate_key(access_key, secret).map_err(MetaError::invalid)
        }
        UserCommand::RemoveKey { .. } => Ok(()),
        UserCommand::SetBucketPolicy { bucket, policy } => {
            validate_bucket_name(bucket).map_err(MetaError::invalid)?;
            for u in policy.owner.iter().chain(policy.grants.keys()) {
                validate_user_name(u).map_err(MetaError::invalid)?;
            }
            if policy.grants.len() > 1000 {
                return Err(MetaError::invalid("at most 1000 grants per bucket"));
            }
            Ok(())
        }
        UserCommand::RemoveBucketPolicy { bucket } => {
            validate_bucket_name(bucket).map_err(MetaError::invalid)
        }
    }
}

fn no_user(name: &str) -> MetaError {
    MetaError::NotFound {
        kind: "user",
        name: name.to_string(),
    }
}

pub fn apply(s: &mut State, c: &UserCommand, at_ms: u64) -> Result<MetaResult, MetaError> {
    let db = &mut s.users;
    match c {
        UserCommand::CreateUser { name, admin } => {
            if db.users.contains_key(name) {
                return Err(MetaError::Exists {
                    kind: "user",
                    name: name.clone(),
                });
            }
            if db.users.len() >= MAX_USERS {
                return Err(MetaError::invalid(format!("at most {MAX_USERS} users")));
            }
            db.users.insert(
                name.clone(),
                UserInfo {
                    name: name.clone(),
                    admin: *admin,
                    keys: Vec::new(),
                    created_ms: at_ms,
                },
            );
        }
        UserCommand::RemoveUser { name } => {
            db.users.remove(name).ok_or_else(|| no_user(name))?;
            for p in db.buckets.values_mut() {
                if p.owner.as_deref() == Some(name.as_str()) {
                    p.owner = None;
                }
                p.grants.remove(name);
            }
        }
        UserCommand::AddKey {
            user,
            access_key,
            secret,
        } => {
            if db.by_access_key(access_key).is_some() {
                return Err(MetaError::Exists {
                    kind: "access key",
                    name: access_key.clone(),
                });
            }
            let u = db.users.get_mut(user).ok_or_else(|| no_user(user))?;
            if u.keys.len() >= MAX_KEYS_PER_USER {
                return Err(MetaError::invalid(format!(
                    "at most {MAX_KEYS_PER_USER} keys per user"
                )));
            }
            u.keys.push(AccessKey {
                access_key: access_key.clone(),
                secret: secret.clone(),
                created_ms: at_ms,
            });
        }
        UserCommand::RemoveKey { access_key } => {
            let u = db
                .users
                .values_mut()
                .find(|u| u.keys.iter().any(|k| &k.access_key == access_key))
                .ok_or_else(|| MetaError::NotFound {
                    kind: "access key",
                    name: access_key.clone(),
                })?;
            u.keys.retain(|k| &k.access_key != access_key);
        }
        UserCommand::SetBucketPolicy { bucket, policy } => {
            for u in policy.owner.iter().chain(policy.grants.keys()) {
                if !db.users.contains_key(u) {
                    return Err(no_user(u));
                }
            }
            let mut policy = policy.clone();
            // The first policy of a bucket dates it; later changes keep that date.
            policy.created_ms = db.buckets.get(bucket).map_or(at_ms, |p| p.created_ms);
            db.buckets.insert(bucket.clone(), policy);
        }
        UserCommand::RemoveBucketPolicy { bucket } => {
            db.buckets.remove(bucket);
        }
    }
    Ok(MetaResult::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::user::{BucketPolicy, Grant};
    use std::collections::BTreeMap;

    fn run(s: &mut State, c: UserCommand) -> Result<MetaResult, MetaError> {
        validate(&c)?;
        apply(s, &c, 7)
    }

    #[test]
    fn users_keys_and_policies() {
        let mut s = State::bootstrap(&BTreeMap::new());
        let create = |name: &str| UserCommand::CreateUser {
            name: name.into(),
            admin: false,
        };
        run(&mut s, create("alice")).unwrap();
        run(&mut s, create("bob")).unwrap();
        assert!(matches!(
            run(&mut s, create("alice")),
            Err(MetaError::Exists { .. })
        ));
        let key = |user: &str, ak: &str| UserCommand::AddKey {
            user: user.into(),
            access_key: ak.into(),
            secret: "0123456789abcdef0123".into(),
        };
        run(&mut s, key("alice", "AKALICE000000001")).unwrap();
        // An access key names one user only.
        assert!(run(&mut s, key("bob", "AKALICE000000001")).is_err());
        assert!(run(&mut s, key("carol", "AKCAROL000000001")).is_err());
        assert_eq!(
            s.users.by_access_key("AKALICE000000001").unwrap().0.name,
            "alice"
        );
        let policy = BucketPolicy {
            owner: Some("alice".into()),
            grants: [("bob".to_string(), Grant::Read)].into(),
            public_read: false,
            created_ms: 0,
        };
        run(
            &mut s,
            UserCommand::SetBucketPolicy {
                bucket: "photos".into(),
                policy: policy.clone(),
            },
        )
        .unwrap();
        assert_eq!(s.users.buckets["photos"].created_ms, 7);
        // Removing a user drops its ownership and grants, and its keys stop working.
        run(&mut s, UserCommand::RemoveUser { name: "bob".into() }).unwrap();
        assert!(s.users.buckets["photos"].grants.is_empty());
        run(
            &mut s,
            UserCommand::RemoveKey {
                access_key: "AKALICE000000001".into(),
            },
        )
        .unwrap();
        assert!(s.users.by_access_key("AKALICE000000001").is_none());
        // A policy naming an unknown user is refused.
        assert!(run(
            &mut s,
            UserCommand::SetBucketPolicy {
                bucket: "photos".into(),
                policy: BucketPolicy {
                    owner: Some("nobody".into()),
                    ..policy
                },
            },
        )
        .is_err());
    }
}
