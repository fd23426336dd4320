// Package throttleserver is a strict, local stand-in for a rate-limited API,
// used by the demo (examples/demo) and by the end-to-end test.
//
// It counts the arrivals of each API key in a sliding window, the way the
// APIs this module was built for do: a request is accepted only if, with it,
// no half-open interval of length Window holds more than Limit counted
// arrivals of that key. An arrival at t counts in the windows that contain t
// and stops counting at exactly t + Window. Beyond the quota it answers
// 429 Too Many Requests with a Retry-After header (whole seconds, rounded up,
// until enough counted arrivals have left the window); otherwise it answers
// 200 with a small JSON body after a random latency.
//
// By default a refused request does not count against the quota, so the
// busiest window of a key measures the calls the server accepted and can
// never exceed Limit. Some real APIs do count throttled calls; set
// Config.CountRefused to model them (then a client that keeps hammering
// keeps itself locked out).
//
// Every arrival is recorded with its time and status, so that a caller can
// compute afterwards how many 429s a client earned, its busiest window and
// its calls per second (see Stats).
package throttleserver

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Defaults used for the zero fields of Config. The quota is the one of the
// APIs this module was built for: 100 calls per 60 seconds per key.
const (
	DefaultLimit     = 100
	DefaultWindow    = 60 * time.Second
	DefaultKeyHeader = "X-API-Key"
	DefaultKey       = "default"
)

// Config configures a Server. The zero value is a server with the default
// quota, no latency and the real clock.
type Config struct {
	// Limit is the number of arrivals per Window counted for one key.
	// Zero means DefaultLimit.
	Limit int
	// Window is the length of the sliding window. Zero means DefaultWindow.
	Window time.Duration

	// KeyHeader names the request header that carries the API key.
	// Zero means DefaultKeyHeader. Requests without it use DefaultKey.
	KeyHeader string

	// CountRefused makes refused (429) requests count against the quota, as
	// some real APIs do. By default they do not.
	CountRefused bool

	// LatencyMin and LatencyMax bound the random delay before each 200
	// response, drawn uniformly from [LatencyMin, LatencyMax]. A 429 is
	// answered at once. Both zero means no delay.
	LatencyMin, LatencyMax time.Duration
	// Seed seeds the latency generator, so runs can be repeated.
	Seed uint64

	// Now returns the current time; nil means time.Now. Tests inject a fake
	// clock here to check the window's boundaries without sleeping. The
	// latency delay always uses real time.
	Now func() time.Time
}

// Arrival is one request as the server saw it.
type Arrival struct {
	At     time.Time
	Status int // http.StatusOK or http.StatusTooManyRequests
}

// Server is the throttling API server. It is an http.Handler; Start serves it
// on a loopback port. It is safe for concurrent use; its lock is held only
// to decide on and record an arrival, never during the latency delay.
type Server struct {
	cfg Config // set by New, never changed

	mu   sync.Mutex // guards the fields below
	rng  *rand.Rand
	keys map[string]*keyState
	hs   *http.Server  // set by Start
	done chan struct{} // closed when hs.Serve returns
}

// keyState is what the server knows about one API key.
type keyState struct {
	// counted holds the times of the arrivals that count against the quota
	// and may still be in the window, oldest first. Arrivals are stamped
	// under Server.mu, so the slice is in order; an entry leaves once
	// now - at >= Window. Its length never exceeds Limit unless
	// CountRefused is set.
	counted []time.Time

	log       []Arrival // every arrival, in order
	accepted  int
	throttled int
}

// New returns a Server for cfg, with the defaults filled in. It panics on a
// negative limit or window or on LatencyMax < LatencyMin: this package only
// serves the demo and tests, where such a Config is a programming error.
func New(cfg Config) *Server {
	if cfg.Limit == 0 {
		cfg.Limit = DefaultLimit
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.KeyHeader == "" {
		cfg.KeyHeader = DefaultKeyHeader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	switch {
	case cfg.Limit < 0:
		panic(fmt.Sprintf("throttleserver: limit must be positive, got %d", cfg.Limit))
	case cfg.Window < 0:
		panic(fmt.Sprintf("throttleserver: window must be positive, got %v", cfg.Window))
	case cfg.LatencyMin < 0 || cfg.LatencyMax < cfg.LatencyMin:
		panic(fmt.Sprintf("throttleserver: bad latency range [%v, %v]", cfg.LatencyMin, cfg.LatencyMax))
	}
	return &Server{
		cfg:  cfg,
		rng:  rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		keys: make(map[string]*keyState),
	}
}

// Config returns the server's configuration, defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// decision is what arrive decided for one request.
type decision struct {
	ok         bool
	remaining  int           // calls left in the window after this one (if ok)
	retryAfter int           // whole seconds (if refused)
	latency    time.Duration // delay before answering (if ok)
}

// arrive counts one arrival of key and decides on it. The time is read under
// the lock so that the per-key log stays in arrival order.
func (s *Server) arrive(key string) decision {
	s.mu.Lock()
	defer s.mu.Unlock()

	now := s.cfg.Now()
	st := s.keys[key]
	if st == nil {
		st = &keyState{}
		s.keys[key] = st
	}

	// Drop the arrivals that have left the window: one at t stops counting
	// at exactly t + Window.
	i := 0
	for i < len(st.counted) && now.Sub(st.counted[i]) >= s.cfg.Window {
		i++
	}
	st.counted = st.counted[i:]

	if len(st.counted) < s.cfg.Limit {
		st.counted = append(st.counted, now)
		st.log = append(st.log, Arrival{At: now, Status: http.StatusOK})
		st.accepted++
		return decision{
			ok:        true,
			remaining: s.cfg.Limit - len(st.counted),
			latency:   s.latencyLocked(),
		}
	}

	if s.cfg.CountRefused {
		st.counted = append(st.counted, now)
	}
	st.log = append(st.log, Arrival{At: now, Status: http.StatusTooManyRequests})
	st.throttled++

	// A request is accepted again once fewer than Limit counted arrivals
	// remain: when the first len-Limit+1 of them have left the window.
	// Without CountRefused, len == Limit and that is the oldest one.
	free := st.counted[len(st.counted)-s.cfg.Limit].Add(s.cfg.Window)
	return decision{retryAfter: ceilSeconds(free.Sub(now))}
}

// latencyLocked draws the delay of one response. s.mu must be held: the
// generator is not safe for concurrent use.
func (s *Server) latencyLocked() time.Duration {
	lo, hi := s.cfg.LatencyMin, s.cfg.LatencyMax
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)+1))
}

// ceilSeconds rounds d up to whole seconds, at least 1: Retry-After must
// never tell a client to come back before the slot is free.
func ceilSeconds(d time.Duration) int {
	secs := int((d + time.Second - 1) / time.Second)
	return max(secs, 1)
}

// ServeHTTP answers one API call: 429 with Retry-After beyond the quota of
// the request's key, otherwise 200 with a small JSON body after a random
// latency.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get(s.cfg.KeyHeader)
	if key == "" {
		key = DefaultKey
	}
	d := s.arrive(key)

	w.Header().Set("Content-Type", "application/json")
	if !d.ok {
		w.Header().Set("Retry-After", strconv.Itoa(d.retryAfter))
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprintf(w, "{\"error\":\"rate limit exceeded\",\"retry_after\":%d}\n", d.retryAfter)
		return
	}

	if d.latency > 0 {
		t := time.NewTimer(d.latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return // the client is gone
		}
	}
	fmt.Fprintf(w, "{\"key\":%q,\"remaining\":%d}\n", key, d.remaining)
}

// Start serves s on a fresh port of 127.0.0.1 until Close, and returns its
// base URL ("http://127.0.0.1:port"). A Server can be started once.
func (s *Server) Start() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hs != nil {
		return "", errors.New("throttleserver: already started")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("throttleserver: %w", err)
	}
	s.hs = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.done = make(chan struct{})
	go func(hs *http.Server, done chan<- struct{}) {
		defer close(done)
		_ = hs.Serve(ln) // always http.ErrServerClosed after Close
	}(s.hs, s.done)
	return "http://" + ln.Addr().String(), nil
}

// Close stops a server started with Start: it closes the listener and all
// connections, and waits until the serving goroutine has returned. Handlers
// still delaying a response see their request's context cancelled.
func (s *Server) Close() error {
	s.mu.Lock()
	hs, done := s.hs, s.done
	s.mu.Unlock()
	if hs == nil {
		return nil
	}
	err := hs.Close()
	<-done
	return err
}

// Counts returns how many requests of key were accepted and refused so far.
// It is cheap enough to call for live progress.
func (s *Server) Counts(key string) (accepted, throttled int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.keys[key]; st != nil {
		return st.accepted, st.throttled
	}
	return 0, 0
}

// Stats returns a snapshot of everything key did so far.
func (s *Server) Stats(key string) Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	stats := Stats{Limit: s.cfg.Limit, Window: s.cfg.Window}
	if st := s.keys[key]; st != nil {
		stats.Arrivals = append([]Arrival(nil), st.log...)
		stats.Accepted = st.accepted
		stats.Throttled = st.throttled
	}
	return stats
}

// Stats is a snapshot of the arrivals of one API key.
type Stats struct {
	Limit     int
	Window    time.Duration
	Arrivals  []Arrival // every request, in order of arrival
	Accepted  int       // answered 200
	Throttled int       // answered 429
}

// BusiestWindow returns the largest number of accepted arrivals in any
// half-open interval of length Window. The server guarantees it is at most
// Limit.
func (s Stats) BusiestWindow() int {
	return busiest(s.Arrivals, s.Window, func(a Arrival) bool { return a.Status == http.StatusOK })
}

// BusiestWindowAll is like BusiestWindow but counts every arrival, refused
// ones too: how hard the client pushed.
func (s Stats) BusiestWindowAll() int {
	return busiest(s.Arrivals, s.Window, func(Arrival) bool { return true })
}

// busiest returns the most arrivals matching keep in any half-open interval
// [t, t+w). Such a maximum is always reached by an interval that starts at
// an arrival, so two indexes sweeping the ordered arrivals find it.
func busiest(arrivals []Arrival, w time.Duration, keep func(Arrival) bool) int {
	var times []time.Time
	for _, a := range arrivals {
		if keep(a) {
			times = append(times, a.At)
		}
	}
	best, end := 0, 0
	for start := range times {
		for end < len(times) && times[end].Sub(times[start]) < w {
			end++
		}
		best = max(best, end-start)
	}
	return best
}

// Histogram counts the arrivals per bucket of the given length from start:
// accepted[i] and throttled[i] count the arrivals in
// [start + i*bucket, start + (i+1)*bucket). Arrivals before start count in
// the first bucket. Both slices run to the bucket of the last arrival.
func (s Stats) Histogram(start time.Time, bucket time.Duration) (accepted, throttled []int) {
	if bucket <= 0 {
		panic(fmt.Sprintf("throttleserver: histogram bucket must be positive, got %v", bucket))
	}
	n := 0
	for _, a := range s.Arrivals {
		n = max(n, bucketOf(a.At, start, bucket)+1)
	}
	accepted, throttled = make([]int, n), make([]int, n)
	for _, a := range s.Arrivals {
		i := bucketOf(a.At, start, bucket)
		if a.Status == http.StatusOK {
			accepted[i]++
		} else {
			throttled[i]++
		}
	}
	return accepted, throttled
}

func bucketOf(t, start time.Time, bucket time.Duration) int {
	return max(int(t.Sub(start)/bucket), 0)
}
