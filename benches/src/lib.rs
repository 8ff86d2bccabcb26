//! Benchmarks and load generators for the bridge toolkit; see `BENCHMARKS.md` at the root
//! for the figures and the commands that produced them.
