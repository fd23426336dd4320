package limiter

import (
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
		srv := &fakeServer{model: &githubWindow{limit: limit, window: window, rounded: true}, latency: latency, skew: skew}
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
