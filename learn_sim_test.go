package limiter

import (
	"fmt"
	"os"
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
	return runSimAt(t, model, calls, workers, learn, 0, 0)
}

// runSimAt is runSim starting phase into a second of the server's clock,
// which is behind the client's by behind (ahead, if negative).
func runSimAt(t *testing.T, model func() serverModel, calls, workers int, learn bool, phase, behind time.Duration) simResult {
	var res simResult
	synctest.Test(t, func(t *testing.T) {
		skew := time.Until(t0)
		time.Sleep(phase)
		start := time.Now()
		// A synctest bubble starts in 2000, before the Unix resets the
		// Transport reads as such (from 1e9 seconds, in 2001): the server
		// and the client live in 2026.
		srv := &fakeServer{model: model(), latency: time.Millisecond, skew: skew + behind}
		l, err := New(10, time.Second, WithClock(skewedClock{skew}))
		require.NoError(t, err)
		tr := NewTransport(srv, l)
		tr.DisableLearning = !learn
		tr.MaxRetries = 5
		jobFailed := runJob(t, tr, "https://api.example.com/v1/items", calls, workers)
		res.wall = time.Since(start)
		res.failed = jobFailed
		for _, at := range srv.refused {
			d := at.Sub(start)
			res.refusedAt = append(res.refusedAt, d)
			if d >= time.Second {
				res.late++
			}
		}
		res.fastest = fastest(model, start.Add(skew+behind), calls, time.Millisecond)
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
// fakes of servers that count differently, for 40 calls, from 1, 4 and 16
// workers, starting at eight points of the server's second (httprate's
// windows follow the clock). The target: every call succeeds, at most one
// refusal comes after the first window, and the run takes at most 1.5
// times the fastest the server allows within the configured rules. The
// backoff's jitter and the order in which goroutines wake are random, and
// about one run in a thousand misses the target by one refusal and its
// Retry-After: each configuration meets the target in one of three runs,
// and never does worse than two late refusals and 1.8 times.
func TestLearnTheServer(t *testing.T) {
	for _, m := range simModels {
		worst := 0.0
		for _, workers := range []int{1, 4, 16} {
			for phase := time.Duration(0); phase < time.Second; phase += time.Second / 8 {
				what := fmt.Sprintf("%s, %d workers, from %v into a second", m.name, workers, phase)
				met := false
				for try := 0; try < 3 && !met; try++ {
					r := runSimAt(t, m.model, 40, workers, true, phase, 0)
					// Never faster than the configured rules allow: 10 at
					// once, then 10 per second.
					floor := time.Duration((40-1)/10) * time.Second
					ratio := float64(r.wall) / float64(max(r.fastest, floor))
					worst = max(worst, ratio)
					met = r.failed == 0 && r.late <= 1 && ratio <= 1.5
					assert.Zero(t, r.failed, "%s: every call succeeds", what)
					assert.LessOrEqual(t, r.late, 2, "%s: refused after the first window at %v", what, r.refusedAt)
					assert.LessOrEqual(t, ratio, 1.8, "%s: %v, the fastest %v", what, r.wall, r.fastest)
				}
				assert.True(t, met, "%s: the target, in none of three runs", what)
			}
		}
		t.Logf("%s: at worst %.2fx the fastest", m.name, worst)
	}
}

// The server's clock is 2 s behind the client's, or 3 s ahead: its Unix
// resets, read against its Date, still hold calls back long enough.
func TestLearnServerClockBehind(t *testing.T) {
	for _, behind := range []time.Duration{2 * time.Second, -3 * time.Second} {
		r := runSimAt(t, simModels[2].model, 40, 4, true, 300*time.Millisecond, behind)
		assert.Zero(t, r.failed)
		assert.Zero(t, len(r.refusedAt), "server %v behind: refused at %v", behind, r.refusedAt)
		// Its Dates have whole seconds: the waits read against them are
		// up to a second longer than the server's.
		assert.LessOrEqual(t, r.wall, r.fastest+3*time.Second, "server %v behind", behind)
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

// skewedClock is the system clock (a synctest bubble's), skew later.
type skewedClock struct{ skew time.Duration }

func (c skewedClock) Now() time.Time                 { return time.Now().Add(c.skew) }
func (c skewedClock) NewTimer(d time.Duration) Timer { return SystemClock().NewTimer(d) }
