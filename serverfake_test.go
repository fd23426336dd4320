package limiter

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Fakes of the rate limits that real servers enforce, each deciding on
// the time of arrival from time.Now, so that they run in a synctest
// bubble next to a Transport on SystemClock. A fakeServer answers through
// an http.RoundTripper with a little latency each way.

// serverModel decides one call arriving at now and writes the headers the
// real server would send; it reports whether the call was accepted and
// the status of a refusal.
type serverModel interface {
	decide(now time.Time, h http.Header) (ok bool, status int)
}

type fakeServer struct {
	model   serverModel
	latency time.Duration // each way
	skew    time.Duration // the server's clock reads time.Now() + skew

	mu       sync.Mutex
	arrivals []time.Time
	refused  []time.Time
}

func (s *fakeServer) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req.Body.Close()
	}
	time.Sleep(s.latency)
	h := http.Header{}
	s.mu.Lock()
	now := time.Now()
	srv := now.Add(s.skew)
	h.Set("Date", srv.UTC().Format(http.TimeFormat))
	ok, status := s.model.decide(srv, h)
	if ok {
		s.arrivals = append(s.arrivals, now)
		status = http.StatusOK
	} else {
		s.refused = append(s.refused, now)
	}
	s.mu.Unlock()
	time.Sleep(s.latency)
	return &http.Response{StatusCode: status, Header: h, Body: http.NoBody, Request: req}, nil
}

// nginxBucket is nginx's limit_req: a leaky bucket of rate calls per
// second whose excess may reach burst (so burst+1 calls pass at once); a
// refused call changes nothing and gets a bare 429.
type nginxBucket struct {
	rate   float64
	burst  float64
	excess float64
	last   time.Time
}

func (b *nginxBucket) decide(now time.Time, _ http.Header) (bool, int) {
	if b.last.IsZero() {
		b.last = now
		return true, 0
	}
	e := max(0, b.excess-b.rate*now.Sub(b.last).Seconds()+1)
	if e > b.burst {
		return false, http.StatusTooManyRequests
	}
	b.excess, b.last = e, now
	return true, 0
}

// slidingCounter is go-chi/httprate: fixed windows on the wall clock, the
// previous one weighted by how much of it still overlaps the sliding
// window; a refused call is not counted, and gets Retry-After of the
// window. Every response has X-RateLimit headers.
type slidingCounter struct {
	limit  int
	window time.Duration
	start  time.Time // of the current fixed window
	curr   int
	prev   int
}

func (c *slidingCounter) decide(now time.Time, h http.Header) (bool, int) {
	w := now.Truncate(c.window)
	switch {
	case w.Equal(c.start):
	case w.Equal(c.start.Add(c.window)):
		c.start, c.prev, c.curr = w, c.curr, 0
	default:
		c.start, c.prev, c.curr = w, 0, 0
	}
	frac := float64(now.Sub(w)) / float64(c.window)
	rate := int(math.Round(float64(c.prev)*(1-frac) + float64(c.curr)))
	h.Set("X-RateLimit-Limit", strconv.Itoa(c.limit))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(w.Add(c.window).Unix(), 10))
	if rate+1 > c.limit {
		h.Set("X-RateLimit-Remaining", strconv.Itoa(c.limit-rate))
		h.Set("Retry-After", strconv.Itoa(int(c.window.Seconds())))
		return false, http.StatusTooManyRequests
	}
	c.curr++
	h.Set("X-RateLimit-Remaining", strconv.Itoa(c.limit-rate-1))
	return true, 0
}

// githubWindow is GitHub's primary limit: a fixed window that opens with
// the first call after the last one closed, counted down in
// X-RateLimit-Remaining with the reset in Unix seconds; a call past the
// limit gets 403 with X-RateLimit-Remaining: 0. The window starts at the
// call's whole second, or, rounded, lasts window rounded up to a whole
// second as internal/throttleserver has it; either way its reset is exact
// in Unix seconds.
type githubWindow struct {
	limit   int
	window  time.Duration
	rounded bool
	reset   time.Time
	used    int
}

func (g *githubWindow) decide(now time.Time, h http.Header) (bool, int) {
	if !now.Before(g.reset) {
		g.reset, g.used = g.resetAfter(now), 0
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

// resetAfter returns the reset of a window opened by a call at now.
func (g *githubWindow) resetAfter(now time.Time) time.Time {
	if !g.rounded {
		return now.Truncate(time.Second).Add(g.window)
	}
	end := now.Add(g.window)
	if t := end.Truncate(time.Second); t.Before(end) {
		return t.Add(time.Second)
	}
	return end
}

// fastest returns how long n calls take against a fresh copy of a model
// when each goes as soon as the model would accept it, probing every
// step: the fastest the server allows.
func fastest(model func() serverModel, start time.Time, n int, step time.Duration) time.Duration {
	m := model()
	now := start
	for sent := 0; sent < n; {
		if ok, _ := m.decide(now, http.Header{}); ok {
			sent++
			continue
		}
		now = now.Add(step)
	}
	return now.Sub(start)
}

func (s *fakeServer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("%d accepted, %d refused", len(s.arrivals), len(s.refused))
}

// runJob sends calls GET requests to url through tr from workers
// goroutines, each taking the next call as it finishes one, and returns how
// many failed (an error, or a status other than 200 after the Transport's
// retries).
func runJob(t *testing.T, tr *Transport, url string, calls, workers int) (failed int) {
	var next, bad atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(calls) {
				req, err := http.NewRequest(http.MethodGet, url, nil)
				if !assert.NoError(t, err) {
					return
				}
				resp, err := tr.RoundTrip(req)
				if err != nil || resp.StatusCode != http.StatusOK {
					bad.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return int(bad.Load())
}
