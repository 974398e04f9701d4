//go:build race

package rules

// raceEnabled: under the race detector sync.Pool drops what it is given at
// random, so cel-go's pooled evaluation frames get allocated afresh and
// allocation counts mean nothing.
const raceEnabled = true
