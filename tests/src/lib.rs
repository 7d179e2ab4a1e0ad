//! cairn-tests
