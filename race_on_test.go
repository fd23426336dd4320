//go:build race

package limiter

// raceOn reports whether the race detector is on: it allocates, so tests
// that count allocations skip under it.
const raceOn = true
