//! Compiled rules (being written: see the rules/config work item).
/// Placeholder until the compiled rule set lands.
#[derive(Debug, Default)]
pub struct RuleSet;
