//! `bench`: placeholder.
use clap::Args;
/// Options of `bench`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {}
pub(crate) async fn run(_args: &BenchArgs) -> anyhow::Result<()> { Ok(()) }
