//! cairn-osd
