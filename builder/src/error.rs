//! How failures map to exit statuses: 2 for a usage or manifest error, 1 for a
//! build, I/O or verification failure.

use std::process::ExitCode;

/// A mistake in what the user asked for (arguments, manifest, input that cannot
/// be used). Exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(message: impl Into<String>) -> UsageError {
        UsageError(message.into())
    }
}

/// The exit status for an error chain: 2 when any cause is a [`UsageError`].
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    if err.chain().any(|cause| cause.downcast_ref::<UsageError>().is_some()) {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

/// Prints an error as one sentence followed by its causes, the way every
/// subcommand reports failure.
pub fn report(err: &anyhow::Error) {
    let mut causes = err.chain();
    if let Some(first) = causes.next() {
        eprintln!("error: {first}");
    }
    for cause in causes {
        eprintln!("  caused by: {cause}");
    }
}
