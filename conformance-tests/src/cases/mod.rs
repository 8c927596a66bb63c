//! The cases, one module per area. Each case is a generic function over the [`Backend`], so
//! the same code runs on every backend; each names the spec section it checks.

use crate::backend::Backend;
use crate::runner::Case;

pub mod abort;
pub mod async_events;
pub mod durability;
pub mod features;
pub mod format;
pub mod helpers;
pub mod identify;
pub mod interrupts;
pub mod logs;
pub mod namespaces;
pub mod nvm_io;
pub mod prp;
pub mod queues;
pub mod recovery;
pub mod registers;
pub mod sgl;

/// Builds a [`Case`] entry.
#[macro_export]
macro_rules! case {
    ($id:literal, $group:ident, $spec:literal, $title:literal, $f:path) => {
        $crate::runner::Case {
            id: $id,
            group: $crate::runner::Group::$group,
            spec: $spec,
            title: $title,
            run: $f,
            violates: false,
            sim_only: false,
        }
    };
    ($id:literal, $group:ident, $spec:literal, $title:literal, $f:path, violates) => {
        $crate::runner::Case {
            id: $id,
            group: $crate::runner::Group::$group,
            spec: $spec,
            title: $title,
            run: $f,
            violates: true,
            sim_only: false,
        }
    };
    ($id:literal, $group:ident, $spec:literal, $title:literal, $f:path, sim_only) => {
        $crate::runner::Case {
            id: $id,
            group: $crate::runner::Group::$group,
            spec: $spec,
            title: $title,
            run: $f,
            violates: false,
            sim_only: true,
        }
    };
}

/// Every case of the suite.
pub fn all<B: Backend>() -> Vec<Case<B>> {
    let mut v = Vec::new();
    v.extend(registers::cases::<B>());
    v.extend(identify::cases::<B>());
    v.extend(features::cases::<B>());
    v.extend(logs::cases::<B>());
    v.extend(queues::cases::<B>());
    v.extend(async_events::cases::<B>());
    v.extend(abort::cases::<B>());
    v.extend(nvm_io::cases::<B>());
    v.extend(prp::cases::<B>());
    v.extend(sgl::cases::<B>());
    v.extend(interrupts::cases::<B>());
    v.extend(durability::cases::<B>());
    v.extend(format::cases::<B>());
    v.extend(namespaces::cases::<B>());
    v.extend(recovery::cases::<B>());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SimBackend;

    #[test]
    fn ids_unique_and_sections_named() {
        let cases = all::<SimBackend>();
        for (i, c) in cases.iter().enumerate() {
            assert!(
                c.spec.starts_with('§') || c.spec.starts_with("NVM §"),
                "{} names no section",
                c.id
            );
            assert!(
                cases[i + 1..].iter().all(|d| d.id != c.id),
                "duplicate id {}",
                c.id
            );
        }
    }

    #[test]
    fn every_allowance_names_an_existing_case() {
        let cases = all::<SimBackend>();
        for a in crate::allowances::ALLOWANCES {
            assert!(
                cases.iter().any(|c| c.id == a.case),
                "allowance {} names unknown case {}",
                a.id,
                a.case
            );
        }
    }
}
