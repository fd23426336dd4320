package throttleserver

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/apiquota/limiter"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// call sends one request for key straight to the handler, without a network.
func call(t *testing.T, s *Server, key string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/v1/thing", nil)
	if key != "" {
		req.Header.Set(s.Config().KeyHeader, key)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec
}

// step is one request in a table: at t0+at, key gets status (and, for a 429,
// that Retry-After).
type step struct {
	at         time.Duration
	key        string
	status     int
	retryAfter string
}

func runSteps(t *testing.T, cfg Config, steps []step) *Server {
	t.Helper()
	clock := limiter.NewManualClock(t0)
	cfg.Now = clock.Now
	s := New(cfg)
	for i, st := range steps {
		clock.Set(t0.Add(st.at))
		rec := call(t, s, st.key)
		assert.Equal(t, st.status, rec.Code, "step %d at t0+%v", i, st.at)
		assert.Equal(t, st.retryAfter, rec.Header().Get("Retry-After"), "step %d at t0+%v", i, st.at)
	}
	return s
}

func TestWindowBoundary(t *testing.T) {
	// limit n per w: n admitted at t0, the n+1st refused until exactly t0+w.
	s := runSteps(t, Config{Limit: 3, Window: 10 * time.Second}, []step{
		{at: 0, status: 200},
		{at: 0, status: 200},
		{at: 0, status: 200},
		{at: 0, status: 429, retryAfter: "10"},
		{at: 5 * time.Second, status: 429, retryAfter: "5"},
		{at: 10*time.Second - time.Nanosecond, status: 429, retryAfter: "1"},
		{at: 10 * time.Second, status: 200},
		{at: 10 * time.Second, status: 200},
		{at: 10 * time.Second, status: 200},
		{at: 10 * time.Second, status: 429, retryAfter: "10"},
	})
	st := s.Stats(DefaultKey)
	assert.Equal(t, 6, st.Accepted)
	assert.Equal(t, 4, st.Throttled)
	assert.Len(t, st.Arrivals, 10)
	assert.Equal(t, 3, st.BusiestWindow())
	assert.Equal(t, 6, st.BusiestWindowAll())
}

func TestSlidingNotFixedBuckets(t *testing.T) {
	// A fixed 10 s bucket would admit the calls at 9 s and 11 s together
	// with the one at 10 s; the sliding window refuses the one at 11 s.
	runSteps(t, Config{Limit: 2, Window: 10 * time.Second}, []step{
		{at: 0, status: 200},
		{at: 9 * time.Second, status: 200},
		{at: 9500 * time.Millisecond, status: 429, retryAfter: "1"}, // t0 leaves at 10 s
		{at: 10 * time.Second, status: 200},
		{at: 11 * time.Second, status: 429, retryAfter: "8"}, // 9 s leaves at 19 s
		{at: 19 * time.Second, status: 200},
	})
}

func TestRetryAfterRoundsUp(t *testing.T) {
	runSteps(t, Config{Limit: 2, Window: 10 * time.Second}, []step{
		{at: 0, status: 200},
		{at: 2500 * time.Millisecond, status: 200},
		{at: 3 * time.Second, status: 429, retryAfter: "7"},
		{at: 3100 * time.Millisecond, status: 429, retryAfter: "7"}, // 6.9 s
		{at: 9 * time.Second, status: 429, retryAfter: "1"},
		{at: 10 * time.Second, status: 200},
		{at: 10 * time.Second, status: 429, retryAfter: "3"}, // 2.5 s leaves at 12.5 s
	})
}

func TestKeysAreIndependent(t *testing.T) {
	s := runSteps(t, Config{Limit: 1, Window: time.Minute}, []step{
		{key: "a", status: 200},
		{key: "a", status: 429, retryAfter: "60"},
		{key: "b", status: 200},
		{key: "", status: 200}, // no header: DefaultKey
		{key: DefaultKey, status: 429, retryAfter: "60"},
	})
	a, ta := s.Counts("a")
	assert.Equal(t, [2]int{1, 1}, [2]int{a, ta})
	b, tb := s.Counts("b")
	assert.Equal(t, [2]int{1, 0}, [2]int{b, tb})
	n, tn := s.Counts("unknown")
	assert.Equal(t, [2]int{0, 0}, [2]int{n, tn})
	assert.Empty(t, s.Stats("unknown").Arrivals)
}

func TestCustomKeyHeader(t *testing.T) {
	s := New(Config{Limit: 1, KeyHeader: "Authorization"})
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Authorization", "Bearer x")
	s.ServeHTTP(httptest.NewRecorder(), req)
	n, _ := s.Counts("Bearer x")
	assert.Equal(t, 1, n)
}

func TestCountRefused(t *testing.T) {
	// Refused calls count too: hammering keeps pushing the reopening back.
	runSteps(t, Config{Limit: 2, Window: 10 * time.Second, CountRefused: true}, []step{
		{at: 0, status: 200},
		{at: 0, status: 200},
		{at: 1 * time.Second, status: 429, retryAfter: "9"},  // counted: 0, 0, 1
		{at: 5 * time.Second, status: 429, retryAfter: "6"},  // counted: 0, 0, 1, 5; 1 leaves at 11
		{at: 10 * time.Second, status: 429, retryAfter: "5"}, // counted: 1, 5, 10
		{at: 14 * time.Second, status: 429, retryAfter: "6"}, // counted: 5, 10, 14
		{at: 15 * time.Second, status: 429, retryAfter: "9"}, // counted: 10, 14, 15
		{at: 24 * time.Second, status: 200},                  // counted: 15, then 24
	})
	// The default does not count them: the same calls get through at 10 s.
	runSteps(t, Config{Limit: 2, Window: 10 * time.Second}, []step{
		{at: 0, status: 200},
		{at: 0, status: 200},
		{at: 1 * time.Second, status: 429, retryAfter: "9"},
		{at: 5 * time.Second, status: 429, retryAfter: "5"},
		{at: 10 * time.Second, status: 200},
	})
}

func TestResponseBodies(t *testing.T) {
	s := New(Config{Limit: 1})
	rec := call(t, s, "k")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var ok struct {
		Key       string `json:"key"`
		Remaining int    `json:"remaining"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &ok))
	assert.Equal(t, "k", ok.Key)
	assert.Equal(t, 0, ok.Remaining)

	rec = call(t, s, "k")
	require.Equal(t, http.StatusTooManyRequests, rec.Code)
	var refused struct {
		RetryAfter int `json:"retry_after"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &refused))
	assert.Equal(t, 60, refused.RetryAfter)
}

func TestBusiestWindowAndHistogram(t *testing.T) {
	at := func(d time.Duration, status int) Arrival { return Arrival{At: t0.Add(d), Status: status} }
	st := Stats{Limit: 3, Window: time.Second, Arrivals: []Arrival{
		at(0, 200),
		at(900*time.Millisecond, 200),
		at(999*time.Millisecond, 429),
		at(1000*time.Millisecond, 200), // [0, 1s) holds 2 accepted; [0.9s, 1.9s) holds 3
		at(1500*time.Millisecond, 200),
		at(1900*time.Millisecond, 200), // 0.9 s has left: [1s, 2s) holds 3
		at(3200*time.Millisecond, 429),
	}}
	assert.Equal(t, 3, st.BusiestWindow())
	assert.Equal(t, 4, st.BusiestWindowAll()) // 0.9, 0.999, 1.0, 1.5

	ok, refused := st.Histogram(t0, time.Second)
	assert.Equal(t, []int{2, 3, 0, 0}, ok)
	assert.Equal(t, []int{1, 0, 0, 1}, refused)

	// Arrivals before start fall in the first bucket.
	ok, _ = st.Histogram(t0.Add(time.Second), time.Second)
	assert.Equal(t, []int{5, 0, 0}, ok)

	empty := Stats{Window: time.Second}
	assert.Zero(t, empty.BusiestWindow())
	ok, refused = empty.Histogram(t0, time.Second)
	assert.Empty(t, ok)
	assert.Empty(t, refused)
}

func TestLatencyStaysInRange(t *testing.T) {
	s := New(Config{LatencyMin: 5 * time.Millisecond, LatencyMax: 50 * time.Millisecond, Seed: 7})
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := s.latencyLocked()
		require.GreaterOrEqual(t, d, 5*time.Millisecond)
		require.LessOrEqual(t, d, 50*time.Millisecond)
		seen[d] = true
	}
	assert.Greater(t, len(seen), 900, "latency should vary")

	// The same seed gives the same latencies.
	a, b := New(Config{LatencyMax: time.Second, Seed: 1}), New(Config{LatencyMax: time.Second, Seed: 1})
	for range 10 {
		assert.Equal(t, a.latencyLocked(), b.latencyLocked())
	}
	assert.Zero(t, New(Config{}).latencyLocked())
}

func TestNewRejectsBadConfig(t *testing.T) {
	assert.Panics(t, func() { New(Config{Limit: -1}) })
	assert.Panics(t, func() { New(Config{Window: -time.Second}) })
	assert.Panics(t, func() { New(Config{LatencyMin: 2 * time.Millisecond, LatencyMax: time.Millisecond}) })

	cfg := New(Config{}).Config()
	assert.Equal(t, DefaultLimit, cfg.Limit)
	assert.Equal(t, DefaultWindow, cfg.Window)
	assert.Equal(t, DefaultKeyHeader, cfg.KeyHeader)
}

func TestLoopbackConcurrent(t *testing.T) {
	// Many clients at once over a real connection: exactly Limit accepted.
	s := New(Config{Limit: 10, Window: time.Minute, LatencyMax: 2 * time.Millisecond})
	url, err := s.Start()
	require.NoError(t, err)
	defer func() { assert.NoError(t, s.Close()) }()
	require.Regexp(t, `^http://127\.0\.0\.1:\d+$`, url)
	_, err = s.Start()
	require.Error(t, err, "a second Start")

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 20 {
				req, err := http.NewRequest(http.MethodGet, url+"/v1/thing", nil)
				if !assert.NoError(t, err) {
					return
				}
				req.Header.Set(DefaultKeyHeader, "k")
				resp, err := http.DefaultClient.Do(req)
				if !assert.NoError(t, err) {
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusTooManyRequests {
					assert.Equal(t, "60", resp.Header.Get("Retry-After"))
				}
			}
		})
	}
	wg.Wait()

	st := s.Stats("k")
	assert.Equal(t, 10, st.Accepted)
	assert.Equal(t, 70, st.Throttled)
	assert.Len(t, st.Arrivals, 80)
	assert.Equal(t, 10, st.BusiestWindow())
	assert.Equal(t, 80, st.BusiestWindowAll())
	for i := 1; i < len(st.Arrivals); i++ {
		assert.False(t, st.Arrivals[i].At.Before(st.Arrivals[i-1].At), "arrivals out of order at %d", i)
	}
}

func TestCloseWithoutStart(t *testing.T) {
	assert.NoError(t, New(Config{}).Close())
}
