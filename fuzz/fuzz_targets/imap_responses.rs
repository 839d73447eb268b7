//! Arbitrary IMAP server output through `imap::check` over loopback, and our IMAP helpers.
//! The input and its checks: `mail2ticket::fuzzing::Harness::imap_responses`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mail2ticket::fuzzing::Harness;

static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::new);

fuzz_target!(|data: &[u8]| HARNESS.imap_responses(data));
