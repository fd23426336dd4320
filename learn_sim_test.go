package limiter

import (
	"net/http"
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
	wall       time.Duration
	failed     int           // calls whose final status was not 200
	late       int           // refusals after the first window
	refusedAt  []time.Duration
	fastest    time.Duration // the fastest the server allows
}

// runSim sends calls requests from workers goroutines through a Transport
// over New(10, time.Second), the naive setting for a 10/s server, inside
// a synctest bubble, and measures the run.
func runSim(t *testing.T, model func() serverModel, calls, workers int, learn bool) simResult {
	var res simResult
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		srv := &fakeServer{model: model(), latency: time.Millisecond}
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
		res.fastest = fastest(model, start, calls, time.Millisecond)
	})
	return res
}

func TestLearnSim(t *testing.T) {
	models := map[string]func() serverModel{
		"nginx":    func() serverModel { return &nginxBucket{rate: 10, burst: 5} },
		"httprate": func() serverModel { return &slidingCounter{limit: 10, window: time.Second} },
		"github":   func() serverModel { return &githubWindow{limit: 10, window: time.Second} },
	}
	for name, m := range models {
		for _, workers := range []int{1, 5, 16} {
			for _, learn := range []bool{false, true} {
				r := runSim(t, m, 40, workers, learn)
				t.Logf("%-8s workers=%2d learn=%-5v wall=%v fastest=%v ratio=%.2f failed=%d refused=%d late=%d %v",
					name, workers, learn, r.wall, r.fastest, float64(r.wall)/float64(r.fastest), r.failed, len(r.refusedAt), r.late, r.refusedAt)
			}
		}
	}
}
