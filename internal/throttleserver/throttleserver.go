// Package throttleserver is a strict, local stand-in for a rate-limited API,
// used by the demo (examples/demo), the Defender example and the end-to-end
// tests. It enforces the quota models that real servers use, each exact to
// the nanosecond of its definition:
//
//   - ModeWindow (the default): a sliding window per API key, as the APIs
//     this module was built for count: a request is accepted only if, with
//     it, no half-open interval of length Window holds more than Limit
//     counted arrivals of that key. An arrival at t counts in the windows
//     that contain t and stops counting at exactly t + Window. Beyond the
//     quota it answers 429 Too Many Requests with a Retry-After header
//     (whole seconds, rounded up, until the call would fit). Config.Rules
//     adds more windows (1,500 per hour on top of 100 per minute),
//     Config.Routes gives endpoints quotas of their own, and Config.Cost
//     charges a request as several calls (a $batch): layered quotas, as
//     Microsoft's Defender APIs publish them (see Defender).
//   - ModeBucket: the leaky bucket of nginx limit_req (rate = Limit per
//     Window, burst = Burst, nodelay): Burst+1 calls at once, then one per
//     Window/Limit. Beyond it, 429 without Retry-After, as nginx answers
//     with limit_req_status 429.
//   - ModeGitHub: GitHub's primary rate limit, a fixed window of Limit calls
//     that opens with a key's first call and resets Window later (rounded up
//     to a whole second). Every response carries X-RateLimit-Limit,
//     -Remaining, -Used, -Reset (Unix seconds) and -Resource; a spent quota
//     is answered 403 Forbidden with X-RateLimit-Remaining: 0. With
//     SecondaryLimit, GitHub's secondary limit too: more than SecondaryLimit
//     calls in any SecondaryWindow earn 403 with Retry-After.
//
// Accepted calls are answered 200 with a small JSON body after a random
// latency; refused ones at once. Every response carries a Date header read
// from Config.Now, so a server whose clock is off can be modelled.
//
// By default a refused request does not count against the quota, so the
// busiest window of a key measures the calls the server accepted and can
// never exceed Limit. Some real APIs do count throttled calls; set
// Config.CountRefused to model them (then a client that keeps hammering
// keeps itself locked out).
//
// Every arrival is recorded with its time and status, so that a caller can
// compute afterwards how many refusals a client earned, its busiest window
// and its calls per second (see Stats).
package throttleserver

import (
	"errors"
	"fmt"
	"io"
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

// Mode is the quota model a Server enforces.
type Mode string

// The modes; see the package documentation.
const (
	ModeWindow Mode = "window"
	ModeBucket Mode = "bucket"
	ModeGitHub Mode = "github"
)

// Rule is one more sliding-window quota: Limit calls per Window.
type Rule struct {
	Limit  int
	Window time.Duration
}

// Route gives the requests that match Pattern, an http.ServeMux pattern
// such as "POST /api/advancedqueries/run", a sliding-window quota of their
// own, per key, on top of the key's quota. A request matching several
// patterns takes the most specific, as ServeMux does.
type Route struct {
	Pattern string
	Limit   int
	Window  time.Duration
}

// Config configures a Server. The zero value is a sliding-window server
// with the default quota, no latency and the real clock.
type Config struct {
	// Mode is the quota model. Zero means ModeWindow.
	Mode Mode

	// Limit is the number of calls per Window counted for one key: the
	// sliding window's limit, the bucket's rate (Limit per Window) or the
	// fixed window's quota. Zero means DefaultLimit.
	Limit int
	// Window is the length of the window. Zero means DefaultWindow.
	Window time.Duration

	// Burst is nginx's burst in ModeBucket: an idle bucket admits Burst+1
	// calls at once.
	Burst int

	// Rules are more sliding windows per key, all enforced at once with
	// the first (ModeWindow only).
	Rules []Rule
	// Routes are quotas per endpoint, in any mode.
	Routes []Route
	// Cost returns how many calls a request is charged in every rule; nil,
	// or a result below 1, means 1. BatchCost charges a $batch per inner
	// request. It may read the request body.
	Cost func(*http.Request) int

	// SecondaryLimit and SecondaryWindow, in ModeGitHub, add GitHub's
	// secondary limit: at most SecondaryLimit calls in any SecondaryWindow,
	// answered 403 with Retry-After beyond it. Zero means none.
	SecondaryLimit  int
	SecondaryWindow time.Duration

	// WaitInBody, in ModeWindow, sends refusals without a Retry-After
	// header, with the wait in the JSON error body instead
	// ({"error":{"code":"TooManyRequests","message":"Rate limit is
	// exceeded. Try again in 12 seconds."}}), as Microsoft's Defender APIs
	// tell it: a client needs a hook (limiter's Transport.Classify) to read
	// it.
	WaitInBody bool

	// KeyHeader names the request header that carries the API key.
	// Zero means DefaultKeyHeader. Requests without it use DefaultKey.
	KeyHeader string

	// CountRefused makes refused requests count against the sliding
	// windows, as some real APIs do. By default they do not.
	CountRefused bool

	// LatencyMin and LatencyMax bound the random delay before each 200
	// response, drawn uniformly from [LatencyMin, LatencyMax]. A refusal is
	// answered at once. Both zero means no delay.
	LatencyMin, LatencyMax time.Duration
	// Seed seeds the latency generator, so runs can be repeated.
	Seed uint64

	// Now returns the current time; nil means time.Now. Tests inject a fake
	// clock here (limiter.ManualClock's Now) to check the boundaries without
	// sleeping. The latency delay always uses real time.
	Now func() time.Time
}

// Arrival is one request as the server saw it.
type Arrival struct {
	At     time.Time
	Status int    // http.StatusOK, or the refusal: 429 or 403
	Cost   int    // calls charged (0 counts as 1)
	Route  string // the pattern of its Route, or ""
}

// Server is the throttling API server. It is an http.Handler; Start serves it
// on a loopback port. It is safe for concurrent use; its lock is held only
// to decide on and record an arrival, never during the latency delay.
type Server struct {
	cfg    Config         // set by New, never changed
	routes *http.ServeMux // matches Config.Routes; read-only after New
	route  map[string]Route

	mu   sync.Mutex // guards the fields below
	rng  *rand.Rand
	keys map[string]*keyState
	hs   *http.Server  // set by Start
	done chan struct{} // closed when hs.Serve returns
}

// keyState is what the server knows about one API key.
type keyState struct {
	rules     []rule            // the key's quota: the primary rule first
	secondary rule              // GitHub's secondary limit, or nil
	routes    map[string][]rule // per Route pattern, made on first use

	log       []Arrival // every arrival, in order
	accepted  int
	throttled int
}

// New returns a Server for cfg, with the defaults filled in. It panics on a
// negative limit, window or burst, on a bad route pattern or on LatencyMax <
// LatencyMin: this package only serves the demo and tests, where such a
// Config is a programming error.
func New(cfg Config) *Server {
	cfg = withDefaults(cfg)
	check(cfg)
	s := &Server{
		cfg:    cfg,
		routes: http.NewServeMux(),
		route:  make(map[string]Route),
		rng:    rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		keys:   make(map[string]*keyState),
	}
	for _, r := range cfg.Routes {
		s.routes.Handle(r.Pattern, http.NotFoundHandler()) // panics on a bad pattern
		s.route[r.Pattern] = r
	}
	return s
}

func withDefaults(cfg Config) Config {
	if cfg.Mode == "" {
		cfg.Mode = ModeWindow
	}
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
	return cfg
}

func check(cfg Config) {
	bad := func(format string, args ...any) { panic(fmt.Sprintf("throttleserver: "+format, args...)) }
	switch cfg.Mode {
	case ModeWindow, ModeBucket, ModeGitHub:
	default:
		bad("unknown mode %q", cfg.Mode)
	}
	rules := append([]Rule{{cfg.Limit, cfg.Window}}, cfg.Rules...)
	for _, r := range cfg.Routes {
		rules = append(rules, Rule{r.Limit, r.Window})
	}
	if cfg.SecondaryLimit != 0 || cfg.SecondaryWindow != 0 {
		rules = append(rules, Rule{cfg.SecondaryLimit, cfg.SecondaryWindow})
	}
	for _, r := range rules {
		if r.Limit <= 0 || r.Window <= 0 {
			bad("limit and window must be positive, got %d per %v", r.Limit, r.Window)
		}
	}
	switch {
	case cfg.Burst < 0:
		bad("burst must not be negative, got %d", cfg.Burst)
	case cfg.Mode == ModeBucket && cfg.Window < time.Duration(cfg.Limit):
		bad("bucket rate too high: %d per %v", cfg.Limit, cfg.Window)
	case cfg.LatencyMin < 0 || cfg.LatencyMax < cfg.LatencyMin:
		bad("bad latency range [%v, %v]", cfg.LatencyMin, cfg.LatencyMax)
	}
}

// Config returns the server's configuration, defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// newKey makes the rules of a key that calls for the first time.
func (s *Server) newKey() *keyState {
	c := s.cfg
	st := &keyState{routes: make(map[string][]rule)}
	switch c.Mode {
	case ModeBucket:
		st.rules = []rule{&bucketRule{interval: c.Window / time.Duration(c.Limit), burst: c.Burst}}
	case ModeGitHub:
		st.rules = []rule{&fixedRule{limit: c.Limit, window: c.Window}}
		if c.SecondaryLimit > 0 {
			st.secondary = &slidingRule{limit: c.SecondaryLimit, window: c.SecondaryWindow}
		}
	default:
		st.rules = []rule{&slidingRule{limit: c.Limit, window: c.Window}}
		for _, r := range c.Rules {
			st.rules = append(st.rules, &slidingRule{limit: r.Limit, window: r.Window})
		}
	}
	return st
}

// routeRules returns the rules of the route with pattern for st, made on
// first use, or nil for "".
func (s *Server) routeRules(st *keyState, pattern string) []rule {
	if pattern == "" {
		return nil
	}
	rs, ok := st.routes[pattern]
	if !ok {
		r := s.route[pattern]
		rs = []rule{&slidingRule{limit: r.Limit, window: r.Window}}
		st.routes[pattern] = rs
	}
	return rs
}

// inbound is what ServeHTTP learnt of a request before deciding on it.
type inbound struct {
	key   string
	route string // pattern, or ""
	cost  int
}

// decision is what arrive decided for one request.
type decision struct {
	now        time.Time
	status     int
	retryAfter time.Duration // > 0: send Retry-After
	remaining  int           // calls of weight 1 left after this one in the primary rule
	quota      *quota        // ModeGitHub: the X-RateLimit headers
	latency    time.Duration // delay before answering (if accepted)
}

// quota is the state of a fixedRule after a call, for the headers.
type quota struct {
	limit, used int
	reset       time.Time
}

// arrive counts one arrival and decides on it. The time is read under the
// lock so that the per-key log stays in arrival order.
func (s *Server) arrive(c inbound) decision {
	s.mu.Lock()
	defer s.mu.Unlock()

	now := s.cfg.Now()
	st := s.keys[c.key]
	if st == nil {
		st = s.newKey()
		s.keys[c.key] = st
	}
	rules := append(append([]rule(nil), st.rules...), s.routeRules(st, c.route)...)
	d := decision{now: now, status: http.StatusOK}

	if st.secondary != nil {
		if w := st.secondary.wait(now, c.cost); w > 0 {
			d.status, d.retryAfter = http.StatusForbidden, w
		} else {
			st.secondary.add(now, c.cost)
		}
	}
	if d.status == http.StatusOK {
		d = s.decideLocked(d, rules, c.cost)
	}
	st.log = append(st.log, Arrival{At: now, Status: d.status, Cost: c.cost, Route: c.route})
	if d.status == http.StatusOK {
		st.accepted++
		d.latency = s.latencyLocked()
	} else {
		st.throttled++
	}
	d.remaining = st.rules[0].remaining(now)
	if q, ok := st.rules[0].(*fixedRule); ok {
		d.quota = &quota{limit: q.limit, used: q.used, reset: q.reset}
	}
	return d
}

// decideLocked admits a call of weight cost when every rule admits it, and
// records it in all of them; otherwise it refuses it with the longest wait,
// after which every rule admits it if nothing else arrives.
func (s *Server) decideLocked(d decision, rules []rule, cost int) decision {
	var wait time.Duration
	for _, r := range rules {
		wait = max(wait, r.wait(d.now, cost))
	}
	if wait == 0 {
		for _, r := range rules {
			r.add(d.now, cost)
		}
		return d
	}
	switch s.cfg.Mode {
	case ModeGitHub:
		d.status = http.StatusForbidden // the headers say why; no Retry-After
	case ModeBucket:
		d.status = http.StatusTooManyRequests // nginx sends no Retry-After
	default:
		d.status, d.retryAfter = http.StatusTooManyRequests, wait
		if s.cfg.CountRefused {
			// The refusal counts too: the call fits again once it, as
			// well as what came before, has made room.
			d.retryAfter = 0
			for _, r := range rules {
				r.add(d.now, cost)
			}
			for _, r := range rules {
				d.retryAfter = max(d.retryAfter, r.wait(d.now, cost))
			}
		}
	}
	return d
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

// classify reads the key, the route and the cost of r.
func (s *Server) classify(r *http.Request) inbound {
	c := inbound{key: r.Header.Get(s.cfg.KeyHeader), cost: 1}
	if c.key == "" {
		c.key = DefaultKey
	}
	if len(s.route) > 0 {
		_, c.route = s.routes.Handler(r)
	}
	if s.cfg.Cost != nil {
		c.cost = max(s.cfg.Cost(r), 1)
	}
	return c
}

// ServeHTTP answers one API call: a refusal beyond the quota of the
// request's key, as the Mode says, otherwise 200 with a small JSON body
// after a random latency.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := s.classify(r)
	d := s.arrive(c)

	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Date", d.now.UTC().Format(http.TimeFormat))
	if q := d.quota; q != nil {
		h.Set("X-RateLimit-Limit", strconv.Itoa(q.limit))
		h.Set("X-RateLimit-Remaining", strconv.Itoa(d.remaining))
		h.Set("X-RateLimit-Used", strconv.Itoa(q.used))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(q.reset.Unix(), 10))
		h.Set("X-RateLimit-Resource", "core")
	}
	if d.status != http.StatusOK {
		secs := 0
		if d.retryAfter > 0 {
			secs = ceilSeconds(d.retryAfter)
			if !s.cfg.WaitInBody {
				h.Set("Retry-After", strconv.Itoa(secs))
			}
		}
		w.WriteHeader(d.status)
		io.WriteString(w, s.refusal(d, secs))
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
	fmt.Fprintf(w, "{\"key\":%q,\"remaining\":%d}\n", c.key, d.remaining)
}

// GitHub's documentation links, which clients such as go-github read to
// tell the primary limit from the secondary one.
const (
	githubPrimaryDoc   = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-the-primary-rate-limit"
	githubSecondaryDoc = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
)

// refusal is the body of a refused call: GitHub's JSON in ModeGitHub,
// Defender's with WaitInBody, a short JSON error with the wait in seconds
// otherwise.
func (s *Server) refusal(d decision, secs int) string {
	switch {
	case s.cfg.Mode != ModeGitHub && s.cfg.WaitInBody:
		return fmt.Sprintf("{\"error\":{\"code\":\"TooManyRequests\",\"message\":\"Rate limit is exceeded. Try again in %d seconds.\"}}\n", secs)
	case s.cfg.Mode != ModeGitHub:
		return fmt.Sprintf("{\"error\":\"rate limit exceeded\",\"retry_after\":%d}\n", secs)
	case d.retryAfter > 0:
		return `{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"` + githubSecondaryDoc + "\"}\n"
	default:
		return `{"message":"API rate limit exceeded.","documentation_url":"` + githubPrimaryDoc + "\"}\n"
	}
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
