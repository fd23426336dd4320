package limiter

import (
	"fmt"
	"hash/maphash"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// routeSpec is a route as Route registered it; each connection key makes
// its own limiter from it.
type routeSpec struct {
	pattern  string
	limit    int
	window   time.Duration
	opts     []Option
	ownClock bool // opts name a clock: the Transport's readings do not serve it
}

func (s *routeSpec) limiter(clock Clock) (*Limiter, error) {
	opts := append([]Option{WithClock(clock)}, s.opts...)
	return New(s.limit, s.window, opts...)
}

// namesClock reports whether opts set a clock.
func namesClock(opts []Option) bool {
	var cfg config
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	return cfg.clock != nil
}

// routeTable is the Transport's routes: a ServeMux whose handlers name the
// route, so that the standard library decides which pattern matches a
// request, and the most specific one wins. It is replaced, never changed,
// except that its mux gains the patterns of the tables after it.
type routeTable struct {
	mux   *http.ServeMux
	specs []routeSpec
	hosts bool // some pattern names a host; otherwise ServeMux's answer does not depend on it

	// cache remembers ServeMux's recent answers, so that the common case,
	// a request like one seen before, costs a hash and a comparison rather
	// than ServeMux's allocations. Direct mapped: a collision replaces.
	seed  maphash.Seed
	cache [routeCacheSize]atomic.Pointer[routeAnswer]
}

// routeCacheSize is the number of answers a routeTable remembers.
const routeCacheSize = 256

// routeAnswer is the route ServeMux chose for a method, host and path.
type routeAnswer struct {
	method, host, path, rawPath string
	route                       int
}

// routeIndex is the handler of route i in a routeTable's mux.
type routeIndex int

func (routeIndex) ServeHTTP(http.ResponseWriter, *http.Request) {}

// match returns the index of the route of req, or -1.
func (rt *routeTable) match(req *http.Request) int {
	if rt == nil || req.URL == nil {
		return -1
	}
	// ServeMux decides from the method, the host (when a pattern names
	// one) and the path alone. The method, one of a few, is compared but
	// not hashed.
	u := req.URL
	hash := maphash.String(rt.seed, u.Path) ^ uint64(len(req.Method))*17
	host := ""
	if rt.hosts {
		host = req.Host
		hash ^= maphash.String(rt.seed, host) * 31
	}
	slot := &rt.cache[hash%routeCacheSize]
	if a := slot.Load(); a != nil && a.path == u.Path && a.host == host && a.method == req.Method && a.rawPath == u.RawPath {
		return a.route
	}
	route := -1
	h, _ := rt.mux.Handler(req)
	if i, ok := h.(routeIndex); ok && int(i) < len(rt.specs) {
		route = int(i)
	}
	slot.Store(&routeAnswer{req.Method, host, u.Path, u.RawPath, route})
	return route
}

// Route gives the requests that match pattern, an http.ServeMux pattern
// such as "POST /api/advancedqueries/run" or "/api/machines/{id}/", rules
// of their own: at most limit calls per window, and the rules of opts (as
// New takes them; the Transport's clock is used unless opts name one). A
// request that matches passes its route's rules and the connection's; a
// request that matches several patterns takes the most specific, as
// ServeMux decides. On a Transport from NewGroupTransport each connection
// key has its own limiter for each route.
//
// A request first waits for its route's slot and only then for the
// connection's, so that it takes no slot of the connection while it
// waits, and a saturated route does not hold back the others. Route
// returns an error, and registers nothing, for a pattern that ServeMux
// rejects or that another route already has, and for rules that New
// rejects. Register routes before the Transport's first request; Route is
// safe to call concurrently with itself.
func (t *Transport) Route(pattern string, limit int, window time.Duration, opts ...Option) (err error) {
	spec := routeSpec{pattern, limit, window, append([]Option(nil), opts...), namesClock(opts)}
	if _, err := spec.limiter(t.clockOf()); err != nil {
		return routeError(pattern, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.routes.Load()
	next := &routeTable{mux: http.NewServeMux(), seed: maphash.MakeSeed()}
	if old != nil {
		next.mux = old.mux
		next.specs = append(next.specs, old.specs...)
		next.hosts = old.hosts
	}
	defer func() {
		// ServeMux panics on a pattern it rejects, before registering it.
		if r := recover(); r != nil {
			err = routeError(pattern, fmt.Errorf("%v", r))
		}
	}()
	next.mux.Handle(pattern, routeIndex(len(next.specs)))
	next.specs = append(next.specs, spec)
	next.hosts = next.hosts || namesHost(pattern)
	t.routes.Store(next)
	return nil
}

// namesHost reports whether pattern, which ServeMux accepted, names a
// host: "[METHOD ][HOST]/[PATH]", read as ServeMux reads it.
func namesHost(pattern string) bool {
	rest := pattern
	if i := strings.IndexAny(pattern, " \t"); i >= 0 {
		rest = strings.TrimLeft(pattern[i+1:], " \t")
	}
	return !strings.HasPrefix(rest, "/")
}

// partError is the error of one part of what a call was given, a route
// or a part of a snapshot: part names it, and err, which errors.Is and
// errors.As look at, says why.
type partError struct {
	part string
	err  error
}

func routeError(pattern string, err error) error {
	return &partError{fmt.Sprintf("route %q", pattern), err}
}

func (e *partError) Error() string {
	return "limiter: " + e.part + ": " + strings.TrimPrefix(e.err.Error(), "limiter: ")
}

func (e *partError) Unwrap() error { return e.err }
