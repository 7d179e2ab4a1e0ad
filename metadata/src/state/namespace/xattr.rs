//! Extended attributes: kept apart from the inodes, keyed `(ino, name)`, within Linux's limits.

use super::*;

impl Namespace {
    pub(super) fn xattrs_of(&self, ino: Ino) -> impl Iterator<Item = (&(Ino, String), &Vec<u8>)> {
        self.xattrs
            .range((ino, String::new())..)
            .take_while(move |((owner, _), _)| *owner == ino)
    }
}

/// An extended-attribute name and value within Linux's limits.
pub(super) fn check_xattr(name: &str, value: Option<&[u8]>) -> Result<(), FsError> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(FsError::Range);
    }
    if value.is_some_and(|v| v.len() > XATTR_SIZE_MAX) {
        return Err(FsError::TooBig);
    }
    Ok(())
}

impl Txn<'_> {
    pub(super) fn set_xattr_op(
        &mut self,
        ino: Ino,
        name: &str,
        value: &[u8],
        flags: XattrFlag,
    ) -> Result<NsResult, FsError> {
        check_xattr(name, Some(value))?;
        self.ns.inode(ino)?;
        let key = (ino, name.to_string());
        match (flags, self.ns.xattrs.contains_key(&key)) {
            (XattrFlag::CreateOnly, true) => return Err(FsError::Exists),
            (XattrFlag::ReplaceOnly, false) => return Err(FsError::NoData),
            _ => {}
        }
        self.set_xattr(key, Some(value.to_vec()));
        self.touch_ctime(ino)?;
        Ok(NsResult::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn xattrs() {
        let mut ns = Namespace::new(T0);
        let f = mk(&mut ns, ROOT_INO, "f", File);
        let get = |ns: &Namespace, name: &str| {
            ns.query(&NsQuery::GetXattr {
                ino: f,
                name: name.into(),
            })
        };
        assert_eq!(
            ns.apply(&set_xattr(f, "user.b", b"1", XattrFlag::CreateOnly), T0 + 1),
            Ok(NsResult::Done)
        );
        assert_eq!(attr(&ns, f).ctime_ns, T0 + 1);
        ns.apply(&set_xattr(f, "user.a", b"2", XattrFlag::Either), T0)
            .unwrap();
        fails(
            &mut ns,
            &set_xattr(f, "user.a", b"3", XattrFlag::CreateOnly),
            FsError::Exists,
        );
        fails(
            &mut ns,
            &set_xattr(f, "user.c", b"3", XattrFlag::ReplaceOnly),
            FsError::NoData,
        );
        ns.apply(&set_xattr(f, "user.a", b"4", XattrFlag::ReplaceOnly), T0)
            .unwrap();
        ns.apply(&set_xattr(f, "user.b", b"", XattrFlag::Either), T0)
            .unwrap();
        assert_eq!(get(&ns, "user.a"), Ok(NsReply::Xattr(b"4".to_vec())));
        assert_eq!(get(&ns, "user.b"), Ok(NsReply::Xattr(Vec::new())));
        assert_eq!(get(&ns, "user.c"), Err(FsError::NoData));
        assert_eq!(
            ns.query(&NsQuery::ListXattr { ino: f }),
            Ok(NsReply::XattrNames(vec!["user.a".into(), "user.b".into()]))
        );
        let remove = |name: &str| NsOp::RemoveXattr {
            ino: f,
            name: name.into(),
        };
        assert_eq!(ns.apply(&remove("user.a"), T0 + 2), Ok(NsResult::Done));
        assert_eq!(attr(&ns, f).ctime_ns, T0 + 2);
        fails(&mut ns, &remove("user.a"), FsError::NoData);
        assert_eq!(get(&ns, "user.a"), Err(FsError::NoData));
        // Limits: name 1..=255 bytes (ERANGE), value at most 64 KiB (E2BIG).
        let long = "n".repeat(XATTR_NAME_MAX + 1);
        fails(
            &mut ns,
            &set_xattr(f, "", b"", XattrFlag::Either),
            FsError::Range,
        );
        fails(
            &mut ns,
            &set_xattr(f, &long, b"", XattrFlag::Either),
            FsError::Range,
        );
        fails(&mut ns, &remove(&long), FsError::Range);
        let big = vec![7u8; XATTR_SIZE_MAX + 1];
        fails(
            &mut ns,
            &set_xattr(f, "user.big", &big, XattrFlag::Either),
            FsError::TooBig,
        );
        let max = vec![7u8; XATTR_SIZE_MAX];
        ns.apply(&set_xattr(f, &long[1..], &max, XattrFlag::Either), T0)
            .unwrap();
        fails(
            &mut ns,
            &set_xattr(999, "user.a", b"", XattrFlag::Either),
            FsError::Stale,
        );
        assert_eq!(
            ns.query(&NsQuery::ListXattr { ino: 999 }),
            Err(FsError::Stale)
        );
        // They go with the inode.
        ns.apply(&unlink(ROOT_INO, "f"), T0).unwrap();
        assert!(ns.xattrs.is_empty());
        check_invariants(&ns);
    }
}
