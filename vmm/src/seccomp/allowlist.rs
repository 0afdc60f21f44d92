//! A small builder for seccomp allowlists: one line per syscall, with the
//! argument values it may take where matching them is cheap and meaningful.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::SeccompError;

/// The rules of one filter: syscall number to the alternatives that allow
/// it (an empty list allows every call).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// An allowlist being built. A syscall is either allowed outright or with
/// argument conditions, never both: mixing would silently widen it.
#[derive(Default)]
pub struct Allowlist {
    rules: Rules,
    /// Syscalls allowed outright.
    outright: Vec<i64>,
}

impl Allowlist {
    /// Allows `nr` with any arguments.
    pub fn any(mut self, nr: libc::c_long) -> Self {
        debug_assert!(
            self.rules.get(&nr).is_none_or(|r| r.is_empty()),
            "syscall {nr} is already allowed with conditions"
        );
        self.rules.insert(nr, Vec::new());
        self.outright.push(nr);
        self
    }

    /// Allows `nr` when argument `arg` (compared as 32 bits, as the kernel
    /// reads `int` and `unsigned int` arguments) is one of `values`.
    pub fn arg_in(self, nr: libc::c_long, arg: u8, values: &[u64]) -> Result<Self, SeccompError> {
        values.iter().try_fold(self, |list, &value| {
            list.rule(nr, &[(arg, SeccompCmpOp::Eq, value)])
        })
    }

    /// Allows `nr` when every `(arg, op, value)` holds (32-bit compares).
    pub fn rule(
        mut self,
        nr: libc::c_long,
        conditions: &[(u8, SeccompCmpOp, u64)],
    ) -> Result<Self, SeccompError> {
        debug_assert!(
            !self.outright.contains(&nr),
            "syscall {nr} is already allowed outright"
        );
        let conditions = conditions
            .iter()
            .map(|(arg, op, value)| {
                SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.rules
            .entry(nr)
            .or_default()
            .push(SeccompRule::new(conditions)?);
        Ok(self)
    }

    /// Adds a group of rules shared by several kinds.
    pub fn then(
        self,
        group: impl FnOnce(Self) -> Result<Self, SeccompError>,
    ) -> Result<Self, SeccompError> {
        group(self)
    }

    /// The finished rules.
    pub fn into_rules(self) -> Rules {
        self.rules
    }
}
