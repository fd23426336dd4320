package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRun runs the whole comparison on a small quota. The hand-written
// clients sleep a whole second on their 429, so this takes about a second.
func TestRun(t *testing.T) {
	opt := options{
		limit:   5,
		window:  400 * time.Millisecond,
		calls:   10,
		workers: 2,
		latency: latencyRange{time.Millisecond, 2 * time.Millisecond},
		seed:    1,
	}
	var progress bytes.Buffer
	results, err := run(context.Background(), opt, &progress)
	require.NoError(t, err)
	assert.Contains(t, progress.String(), "limiter 10/10")

	require.Len(t, results, 3)
	for i, name := range []string{"none", "x/time/rate", "limiter"} {
		r := results[i]
		assert.Equal(t, name, r.Client)
		assert.Equal(t, 10, r.Calls, r.Client)
		assert.Zero(t, r.Failed, r.Client)
		assert.Equal(t, 5, r.Limit)
		assert.LessOrEqual(t, r.BusiestWindow, r.Limit, r.Client)
		assert.Equal(t, r.Requests, r.Calls+r.Status429, r.Client) // every 429 was retried
	}
	lim := results[2]
	assert.Zero(t, lim.Status429)
	assert.Equal(t, 5, lim.BusiestWindow)
	assert.GreaterOrEqual(t, lim.WallSeconds, 0.4, "the 6th call waits a window")
	assert.InDelta(t, 0.4045, lim.IdealSeconds, 0.001) // a window + 3 round trips of 1.5 ms

	var out bytes.Buffer
	require.NoError(t, printJSON(&out, results))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 3)
	var got map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[2]), &got))
	for _, field := range []string{"client", "calls", "status429", "wall_seconds", "busiest_window", "limit"} {
		assert.Contains(t, got, field)
	}
	assert.Equal(t, "limiter", got["client"])

	out.Reset()
	require.NoError(t, printTable(&out, opt, results))
	assert.Contains(t, out.String(), "busiest 400ms window")
	assert.Contains(t, out.String(), "█")
}

func TestIdealWall(t *testing.T) {
	fixed := func(d time.Duration) latencyRange { return latencyRange{d, d} }
	for _, tc := range []struct {
		name string
		opt  options
		want time.Duration
	}{
		// 300 calls at 100 per 10 s: the last 100 start at 20 s; 8 workers
		// need 13 round trips for them.
		{"default", options{limit: 100, window: 10 * time.Second, calls: 300, workers: 8, latency: fixed(10 * time.Millisecond)}, 20*time.Second + 130*time.Millisecond},
		{"one more window", options{limit: 100, window: 10 * time.Second, calls: 301, workers: 8, latency: fixed(10 * time.Millisecond)}, 30*time.Second + 10*time.Millisecond},
		{"within one window", options{limit: 100, window: 10 * time.Second, calls: 100, workers: 10, latency: fixed(10 * time.Millisecond)}, 100 * time.Millisecond},
		{"the workers are the limit", options{limit: 100, window: time.Second, calls: 300, workers: 1, latency: fixed(100 * time.Millisecond)}, 30 * time.Second},
	} {
		assert.Equal(t, tc.want, idealWall(tc.opt), tc.name)
	}
}

func TestLatencyFlag(t *testing.T) {
	var r latencyRange
	require.NoError(t, r.Set("5ms-50ms"))
	assert.Equal(t, latencyRange{5 * time.Millisecond, 50 * time.Millisecond}, r)
	assert.Equal(t, "5ms-50ms", r.String())
	require.NoError(t, r.Set("20ms"))
	assert.Equal(t, latencyRange{20 * time.Millisecond, 20 * time.Millisecond}, r)
	assert.Equal(t, "20ms", r.String())
	require.NoError(t, r.Set("0s-1s"))
	for _, bad := range []string{"", "fast", "50ms-5ms", "5ms-", "-5ms"} {
		assert.Error(t, r.Set(bad), "%q", bad)
	}
}

func TestSparkline(t *testing.T) {
	assert.Equal(t, " ▁▄█", sparkline([]int{0, 1, 50, 100}, 100))
	assert.Equal(t, "█", sparkline([]int{7}, 7))
	assert.Equal(t, []int{3, 7, 5}, regroup([]int{1, 2, 3, 4, 5}, 2))
	assert.Equal(t, " 0s        10s", axis(12, 1))
	assert.Equal(t, " 0s        20s", axis(12, 2))
}
