//! Live tests: added in the next commit.

fn main() {}
