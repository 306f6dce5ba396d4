//! `compare`: placeholder.
use clap::Args;
/// Options of `compare`.
#[derive(Debug, Clone, Args)]
pub(crate) struct CompareArgs {}
pub(crate) async fn run(_args: &CompareArgs) -> anyhow::Result<()> { Ok(()) }
