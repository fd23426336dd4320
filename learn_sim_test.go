package limiter

import (
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// simResult is what a client run against a fake server measured.
type simResult struct {
	wall      time.Duration
	failed    int // calls whose final status was not 200
	late      int // refusals after the first window
	refusedAt []time.Duration
	fastest   time.Duration // the fastest the server allows
}

// runSim sends calls requests from workers goroutines through a Transport
// over New(10, time.Second), the naive setting for a 10/s server, inside
// a synctest bubble, and measures the run.
func runSim(t *testing.T, model func() serverModel, calls, workers int, learn bool) simResult {
	var res simResult
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		// A synctest bubble starts in 2000, before the Unix resets the
		// Transport reads as such (from 1e9 seconds, in 2001): the server
		// lives in 2026, and its Date header says so.
		skew := t0.Sub(start)
		srv := &fakeServer{model: model(), latency: time.Millisecond, skew: skew}
		l, err := New(10, time.Second)
		require.NoError(t, err)
		tr := NewTransport(srv, l)
		tr.DisableLearning = !learn
		tr.MaxRetries = 5
		var next atomic.Int64
		var failed atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for next.Add(1) <= int64(calls) {
					req, err := http.NewRequest(http.MethodGet, "https://api.example.com/v1/items", nil)
					if !assert.NoError(t, err) {
						return
					}
					resp, err := tr.RoundTrip(req)
					if err != nil || resp.StatusCode != http.StatusOK {
						failed.Add(1)
					}
				}
			})
		}
		wg.Wait()
		res.wall = time.Since(start)
		res.failed = int(failed.Load())
		for _, at := range srv.refused {
			d := at.Sub(start)
			res.refusedAt = append(res.refusedAt, d)
			if d >= time.Second {
				res.late++
			}
		}
		res.fastest = fastest(model, start.Add(skew), calls, time.Millisecond)
	})
	return res
}

var simModels = []struct {
	name  string
	model func() serverModel
}{
	{"nginx limit_req 10r/s burst=5", func() serverModel { return &nginxBucket{rate: 10, burst: 5} }},
	{"httprate 10/s", func() serverModel { return &slidingCounter{limit: 10, window: time.Second} }},
	{"GitHub fixed window 10/s", func() serverModel { return &githubWindow{limit: 10, window: time.Second} }},
}

// TestLearnTheServer runs the naive setting, New(10, time.Second), against
// fakes of servers that count differently, for 40 calls: every call must
// succeed, at most one refusal may come after the first window, and the
// run may take at most 1.5 times the fastest the server allows.
func TestLearnTheServer(t *testing.T) {
	for _, m := range simModels {
		for _, workers := range []int{1, 5, 16} {
			r := runSim(t, m.model, 40, workers, true)
			ratio := float64(r.wall) / float64(r.fastest)
			t.Logf("%s, %d workers: %v (fastest %v, %.2fx), %d refused, %d after the first window",
				m.name, workers, r.wall.Round(time.Millisecond), r.fastest, ratio, len(r.refusedAt), r.late)
			assert.Zero(t, r.failed, "%s, %d workers: every call succeeds", m.name, workers)
			assert.LessOrEqual(t, r.late, 1, "%s, %d workers: refused after the first window at %v", m.name, workers, r.refusedAt)
			assert.LessOrEqual(t, ratio, 1.5, "%s, %d workers: wall time", m.name, workers)
		}
	}
}

// TestLearnTable prints the table of the README: with and without
// learning, 40 and 200 calls. Set LIMITER_SIM_TABLE=1 to run it.
func TestLearnTable(t *testing.T) {
	if os.Getenv("LIMITER_SIM_TABLE") == "" {
		t.Skip("set LIMITER_SIM_TABLE=1 to print the table")
	}
	for _, calls := range []int{40, 200} {
		for _, m := range simModels {
			for _, workers := range []int{1, 5, 16} {
				for _, learn := range []bool{false, true} {
					r := runSim(t, m.model, calls, workers, learn)
					t.Logf("| %s | %d | %d | %v | %d | %d | %v | %.2fx |", m.name, calls, workers, learn,
						len(r.refusedAt), r.late, r.wall.Round(time.Millisecond), float64(r.wall)/float64(r.fastest))
				}
			}
		}
	}
}
