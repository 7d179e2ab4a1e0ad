//! Metadata membership as the state machine sees it: raft id → RPC address, changed by conf-change
//! entries (the address travels in the conf change's context).

use super::State;
use cairn_proto::NodeId;

impl State {
    /// A replica was added (or its address changed).
    pub fn add_member(&mut self, id: NodeId, addr: String) {
        if self.map.meta_members.get(&id) != Some(&addr) {
            self.map.meta_members.insert(id, addr);
            self.map.epoch += 1;
        }
    }

    /// A replica was removed.
    pub fn remove_member(&mut self, id: NodeId) {
        if self.map.meta_members.remove(&id).is_some() {
            self.map.epoch += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn membership_changes_bump_the_epoch_once() {
        let mut s = State::bootstrap(&BTreeMap::from([(1, "a:1".to_string())]));
        let e = s.map.epoch;
        s.add_member(2, "b:2".into());
        s.add_member(2, "b:2".into());
        assert_eq!(s.map.epoch, e + 1);
        s.remove_member(1);
        s.remove_member(1);
        assert_eq!(s.map.epoch, e + 2);
        assert_eq!(s.map.meta_members, BTreeMap::from([(2, "b:2".to_string())]));
    }
}
