// Package examples owns the files a new user starts from: the example rule
// file, and the sample alerts the demo prints curl commands for. They are
// embedded so `scanhook serve --demo` needs nothing on disk.
package examples

import _ "embed"

//go:embed rules.yaml
var rules []byte

//go:embed demo/sentinel-incident.json
var sentinelIncident []byte

//go:embed demo/defender-alert.json
var defenderAlert []byte

// Rules returns the example rule file.
func Rules() []byte { return clone(rules) }

// SentinelIncident returns a Sentinel incident trigger body naming two hosts.
func SentinelIncident() []byte { return clone(sentinelIncident) }

// DefenderAlert returns a Defender alert (the published sample, raised to High).
func DefenderAlert() []byte { return clone(defenderAlert) }

// clone keeps callers from writing into the embedded bytes.
func clone(b []byte) []byte { return append([]byte(nil), b...) }
