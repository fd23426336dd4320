//go:build !linux

package limiter

import "testing"

// reportCPU reports nothing where a thread's CPU time is not at hand.
func reportCPU(*testing.B) {}
