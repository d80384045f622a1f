//! The symbolizer as the command line configures it.

use std::time::Duration;

use emberprof_symbolizer::{
    default_cache_dir, parse_urls, DebuginfodConfig, Symbolizer, SymbolizerConfig,
};

use crate::cli::SymbolArgs;

/// A symbolizer with the debug directories, debuginfod servers and cache bound asked for;
/// `open_files` caps the files it holds open (below the process's descriptor limit).
pub fn symbolizer(args: &SymbolArgs, open_files: usize) -> Symbolizer {
    Symbolizer::with_config(SymbolizerConfig {
        debug_dirs: args.debug_dirs.clone(),
        debuginfod: debuginfod(args),
        cache_bytes: args.symbol_cache_mib.saturating_mul(1 << 20),
        file_limit: args.symbol_files.min(open_files).max(1),
    })
}

fn debuginfod(args: &SymbolArgs) -> Option<DebuginfodConfig> {
    let from_env = DebuginfodConfig::from_env();
    let urls = match args.debuginfod_urls.as_deref() {
        Some(v) if v.trim() == "none" => return None,
        Some(v) => parse_urls(v),
        None => from_env.as_ref()?.urls.clone(),
    };
    if urls.is_empty() {
        return None;
    }
    let cache_dir = args
        .debuginfod_cache
        .clone()
        .or_else(|| from_env.as_ref().map(|c| c.cache_dir.clone()))
        .unwrap_or_else(default_cache_dir);
    tracing::info!(servers = ?urls, cache = %cache_dir.display(), "debuginfod enabled");
    Some(DebuginfodConfig {
        urls,
        cache_dir,
        timeout: from_env.map_or(Duration::from_secs(90), |c| c.timeout),
        negative_ttl: Duration::from_secs(3600),
    })
}
