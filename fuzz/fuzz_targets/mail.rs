//! Raw mail to ticket fields: parse, guard, rules, threading keys.
//! The input and its checks: `mail2ticket::fuzzing::Harness::mail`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mail2ticket::fuzzing::Harness;

static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::new);

fuzz_target!(|data: &[u8]| HARNESS.mail(data));
