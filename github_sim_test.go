package limiter

import (
	"net/http"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runGitHub sends calls requests from workers goroutines through a
// Transport over New(limit, window) against a GitHub-style fixed window
// of the same quota, inside a synctest bubble, with latency each way, and
// returns the wall time, the refusals and the calls that failed.
func runGitHub(t *testing.T, limit int, window time.Duration, calls, workers int, latency time.Duration) (wall time.Duration, refused, failed int) {
	synctest.Test(t, func(t *testing.T) {
		skew := time.Until(t0)
		srv := &fakeServer{model: &githubRounded{limit: limit, window: window}, latency: latency, skew: skew}
		l, err := New(limit, window, WithClock(skewedClock{skew}))
		require.NoError(t, err)
		tr := NewTransport(srv, l)
		tr.MaxRetries = 5
		start := time.Now()
		jobFailed := runJob(t, tr, "https://api.github.example/repos", calls, workers)
		wall, refused, failed = time.Since(start), len(srv.refused), jobFailed

	})
	return wall, refused, failed
}

// Against a GitHub-style fixed window of 10 calls per 2 s (3 s once
// rounded up to the second of its reset), 40 calls fit in four windows,
// 9 s: the Transport uses every call the server says remains, counting
// those in flight, and earns no 403. A call that the budget holds back
// while the calls in flight may have spent it is let go at their answers,
// not at the reset.
func TestLearnGitHubUsesEveryCall(t *testing.T) {
	for _, workers := range []int{1, 4, 16} {
		for _, lat := range []time.Duration{time.Millisecond, 20 * time.Millisecond} {
			w, r, f := runGitHub(t, 10, 2*time.Second, 40, workers, lat)
			t.Logf("%d workers, latency %v: %v, %d refused", workers, lat, w, r)
			assert.Zero(t, f, "%d workers, latency %v: failed", workers, lat)
			assert.Zero(t, r, "%d workers, latency %v: refused", workers, lat)
			assert.Less(t, w, 10*time.Second, "%d workers, latency %v: no fifth window", workers, lat)
		}
	}
}

// githubRounded is GitHub's primary limit as internal/throttleserver has
// it: a fixed window that opens with the first call after the last one
// closed and lasts window rounded up to a whole second, so that its
// X-RateLimit-Reset in Unix seconds is exact; a call past the limit gets
// 403 with X-RateLimit-Remaining: 0.
type githubRounded struct {
	limit  int
	window time.Duration
	reset  time.Time
	used   int
}

func (g *githubRounded) decide(now time.Time, h http.Header) (bool, int) {
	if !now.Before(g.reset) {
		end := now.Add(g.window)
		if t := end.Truncate(time.Second); t.Before(end) {
			end = t.Add(time.Second)
		}
		g.reset, g.used = end, 0
	}
	h.Set("X-RateLimit-Limit", strconv.Itoa(g.limit))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(g.reset.Unix(), 10))
	if g.used >= g.limit {
		h.Set("X-RateLimit-Remaining", "0")
		return false, http.StatusForbidden
	}
	g.used++
	h.Set("X-RateLimit-Remaining", strconv.Itoa(g.limit-g.used))
	return true, 0
}
