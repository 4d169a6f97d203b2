//go:build race

package qcow2_test

// The race detector slows the single-threaded interop tests tenfold; they
// run a lighter load under it (the concurrency tests run in full).
const raceEnabled = true
