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

// secondaryLimit is GitHub's secondary limit as internal/throttleserver
// has it: at most limit calls in any window (sliding); a call past it gets
// 403 with Retry-After in whole seconds, rounded up, and no quota headers.
type secondaryLimit struct {
	limit  int
	window time.Duration
	log    []time.Time
}

func (s *secondaryLimit) decide(now time.Time, h http.Header) (bool, int) {
	for len(s.log) > 0 && !now.Before(s.log[0].Add(s.window)) {
		s.log = s.log[1:]
	}
	if len(s.log) >= s.limit {
		wait := s.log[0].Add(s.window).Sub(now)
		h.Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
		return false, http.StatusForbidden
	}
	s.log = append(s.log, now)
	return true, 0
}

// runSecondary sends calls requests from workers goroutines through a
// Transport over New(100, time.Minute) against a secondary limit of 5 per
// second, in a synctest bubble, and returns the wall time and refusals.
func runSecondary(t *testing.T, calls, workers int) (wall time.Duration, late, failed int) {
	synctest.Test(t, func(t *testing.T) {
		srv := &fakeServer{model: &secondaryLimit{limit: 5, window: time.Second}, latency: 2 * time.Millisecond}
		l, err := New(100, time.Minute)
		require.NoError(t, err)
		tr := NewTransport(srv, l)
		tr.MaxRetries = 5
		start := time.Now()
		jobFailed := runJob(t, tr, "https://api.github.example/repos", calls, workers)
		wall, failed = time.Since(start), jobFailed
		for _, at := range srv.refused {
			if at.Sub(start) >= time.Second {
				late++
			}
		}
	})
	return wall, late, failed
}

// After GitHub's secondary limit refuses (403, Retry-After: 1, 5 calls a
// second), the Transport over New(100, time.Minute) learns 5 calls per
// second rather than slowing to the configured pace of one call each 600
// ms: 20 calls take 3 to 4 s (the fastest the server allows: 3.0 s; a
// fit may count one call short), not 7.6 s, and the server refuses
// nothing after the first second.
func TestLearnSecondaryLimit(t *testing.T) {
	for _, workers := range []int{1, 4, 16} {
		w, late, f := runSecondary(t, 20, workers)
		t.Logf("%d workers: %v, %d refused after the first second", workers, w, late)
		assert.Zero(t, f, "%d workers: failed", workers)
		assert.Zero(t, late, "%d workers: refused after the first second", workers)
		assert.Less(t, w, 4500*time.Millisecond, "%d workers: 7.6 s before", workers)
	}
}
