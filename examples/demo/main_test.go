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
		server:  "window",
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
	assert.Contains(t, progress.String(), "sliding window: 5 calls per 400ms per API key")

	require.Len(t, results, 3)
	for i, name := range []string{"none", "x/time/rate", "limiter"} {
		r := results[i]
		assert.Equal(t, name, r.Client)
		assert.Equal(t, 10, r.Calls, r.Client)
		assert.Zero(t, r.Failed, r.Client)
		assert.Equal(t, 5, r.Limit)
		assert.LessOrEqual(t, r.BusiestWindow, r.Limit, r.Client)
		assert.Equal(t, r.Requests, r.Calls+r.Status429, r.Client) // every 429 was retried
		assert.Equal(t, r.Status429, r.Refused, r.Client)
	}
	lim := results[2]
	assert.Zero(t, lim.Status429)
	assert.Equal(t, 5, lim.BusiestWindow)
	assert.GreaterOrEqual(t, lim.WallSeconds, 0.4, "the 6th call waits a window")
	assert.InDelta(t, 0.4015, lim.IdealSeconds, 0.001) // a window + a round trip of 1.5 ms

	var out bytes.Buffer
	require.NoError(t, printJSON(&out, results))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 3)
	var got map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[2]), &got))
	for _, field := range []string{"client", "calls", "status429", "refused", "refused_later", "wall_seconds", "busiest_window", "limit"} {
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
	ms := time.Millisecond
	for _, tc := range []struct {
		name string
		opt  options
		want time.Duration
	}{
		// 300 calls at 100 per 10 s: the last 100 can start at 20 s.
		{"default", options{server: "window", limit: 100, window: 10 * time.Second, calls: 300, workers: 8, latency: fixed(10 * ms)}, 20*time.Second + 10*ms},
		{"one more window", options{server: "window", limit: 100, window: 10 * time.Second, calls: 301, workers: 8, latency: fixed(10 * ms)}, 30*time.Second + 10*ms},
		{"within one window", options{server: "window", limit: 100, window: 10 * time.Second, calls: 100, workers: 10, latency: fixed(10 * ms)}, 100 * ms},
		{"the workers are the limit", options{server: "window", limit: 100, window: time.Second, calls: 300, workers: 1, latency: fixed(100 * ms)}, 30 * time.Second},
		// nginx's burst=5 admits 6 at once, then one per 100 ms.
		{"bucket", options{server: "bucket", limit: 10, window: time.Second, burst: 5, calls: 40, workers: 4, latency: fixed(10 * ms)}, 3400*ms + 10*ms},
		{"github", options{server: "github", limit: 100, window: 10 * time.Second, calls: 250, workers: 8, latency: fixed(10 * ms)}, 20*time.Second + 10*ms},
		// 300 calls cost 300 + 12 batches x 9 more = 408: the tenant's 100
		// per 10 s lets the last start in the fifth window.
		{"layered", options{server: "layered", window: 10 * time.Second, calls: 300, workers: 8, latency: fixed(10 * ms)}, 40*time.Second + 10*ms},
	} {
		assert.Equal(t, tc.want, idealWall(tc.opt), tc.name)
	}
}

// TestRunServers runs the comparison against each other server on a small
// quota, on the real clock (a few seconds each): the limiter's client makes
// every call, and the server refuses it at most once after the first
// window, as issue 8 sets the target.
func TestRunServers(t *testing.T) {
	for _, opt := range []options{
		{server: "bucket", limit: 10, window: time.Second, burst: 5, calls: 30},
		{server: "github", limit: 5, window: 500 * time.Millisecond, calls: 15},
		{server: "layered", window: 500 * time.Millisecond, calls: 150},
	} {
		t.Run(opt.server, func(t *testing.T) {
			opt.workers, opt.seed = 4, 1
			opt.latency = latencyRange{time.Millisecond, 2 * time.Millisecond}
			require.NoError(t, opt.fill())
			var progress bytes.Buffer
			results, err := run(context.Background(), opt, &progress)
			require.NoError(t, err)
			require.Len(t, results, 3)
			lim := results[2]
			require.Equal(t, "limiter", lim.Client)
			t.Logf("%s: limiter refused %d (%d later), wall %.2fs, ideal %.2fs", opt.server, lim.Refused, lim.RefusedLater, lim.WallSeconds, lim.IdealSeconds)
			assert.Equal(t, opt.calls, lim.Calls)
			assert.Zero(t, lim.Failed)
			assert.LessOrEqual(t, lim.RefusedLater, 1, "refusals in the first window only")
			if opt.server == "layered" {
				assert.Zero(t, lim.Refused, "the quotas are stated exactly")
			}
			if opt.server != "github" { // its windows end on the server's whole seconds, which the ideal takes as aligned
				assert.GreaterOrEqual(t, lim.WallSeconds, lim.IdealSeconds-0.01, "no client beats the ideal")
			}
		})
	}
}

func TestServerFlag(t *testing.T) {
	opt := options{server: "bucket", workers: 8}
	require.NoError(t, opt.fill())
	assert.Equal(t, options{server: "bucket", limit: 10, window: time.Second, burst: 5, calls: 150, workers: 8}, opt)
	opt = options{server: "github", limit: 7, workers: 1}
	require.NoError(t, opt.fill())
	assert.Equal(t, 7, opt.limit)
	assert.Equal(t, 10*time.Second, opt.window)
	opt = options{server: "leaky", workers: 1}
	assert.ErrorContains(t, opt.fill(), `"leaky"`)
	opt = options{server: "window", workers: 0}
	assert.Error(t, opt.fill())
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
