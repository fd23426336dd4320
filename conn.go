package limiter

import (
	"sync"
	"sync/atomic"
	"time"
)

// connState is what a Transport keeps for one connection key: its routes'
// limiters and what it learned about the server. A Transport from
// NewTransport has one; one from NewGroupTransport has one per key in use,
// in a connTable.
type connState struct {
	mu       sync.Mutex
	refs     int // RoundTrips using it now; a state in use is never dropped
	inflight int // attempts sent whose response has not been read
	learn    learner

	// routes is replaced, under mu, never changed, so that a request
	// finds its route's limiter without the lock.
	routes atomic.Pointer[[]routeLimiter]

	key string // in the connTable
	idx int    // in connTable.list
}

// routeLimiter is one route's limiter for one connection key, and the
// Remaining it had when new, to tell when it holds nothing.
type routeLimiter struct {
	l    *Limiter
	full int
}

// route returns the limiter of route i, making it on first use, and
// whether it reads the Transport's clock.
func (c *connState) route(t *Transport, rt *routeTable, i int) (*Limiter, bool, error) {
	if rs := c.routes.Load(); rs != nil && i < len(*rs) && (*rs)[i].l != nil {
		return (*rs)[i].l, !rt.specs[i].ownClock, nil
	}
	l, err := rt.specs[i].limiter(t.clockOf())
	if err != nil {
		return nil, false, err // checked by Route; only a clock set later can fail
	}
	// Another request may have made one meanwhile: it is the one.
	return c.installRoute(i, l), !rt.specs[i].ownClock, nil
}

// installRoute makes l the limiter of route i, unless it has one, and
// returns the limiter the route has.
func (c *connState) installRoute(i int, l *Limiter) *Limiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	rs := c.routeList()
	if i < len(rs) && rs[i].l != nil {
		return rs[i].l
	}
	next := make([]routeLimiter, max(len(rs), i+1))
	copy(next, rs)
	next[i] = routeLimiter{l, l.Remaining()}
	c.routes.Store(&next)
	return l
}

// routeList returns the routes' limiters made so far, by route index;
// some may be nil.
func (c *connState) routeList() []routeLimiter {
	if rs := c.routes.Load(); rs != nil {
		return *rs
	}
	return nil
}

// idleLocked reports whether c holds nothing that matters at now, so that
// dropping it loses no count and nothing learned that is still in use.
// c.mu must be held.
func (c *connState) idleLocked(now time.Time) bool {
	if c.refs > 0 || c.inflight > 0 || !c.learn.idle(now) {
		return false
	}
	for _, r := range c.routeList() {
		if r.l != nil && !fresh(r.l, r.full) {
			return false
		}
	}
	return true
}

// connSweep is how many states a lookup in a connTable checks for
// idleness: a bounded amount of work per call, which still drops idle
// states faster than one new key per call can add them.
const connSweep = 2

// connTable holds the connState of each key of a group Transport. Its
// memory follows the keys in use: each lookup checks the next few states,
// round robin, and drops those that are idle.
type connTable struct {
	mu   sync.Mutex
	m    map[string]*connState
	list []*connState
	hand int
}

// get returns the state of key, made if there is none, with a reference
// that the caller must give back with put.
func (ct *connTable) get(key string, now time.Time) *connState {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	c := ct.m[key]
	if c == nil {
		if ct.m == nil {
			ct.m = make(map[string]*connState)
		}
		c = &connState{key: key, idx: len(ct.list)}
		ct.m[key] = c
		ct.list = append(ct.list, c)
	}
	c.mu.Lock()
	c.refs++
	c.mu.Unlock()
	ct.sweepLocked(now)
	return c
}

// sweepLocked checks up to connSweep states and drops the idle ones.
// ct.mu must be held.
func (ct *connTable) sweepLocked(now time.Time) {
	for range min(connSweep, len(ct.list)) {
		if ct.hand >= len(ct.list) {
			ct.hand = 0
		}
		c := ct.list[ct.hand]
		c.mu.Lock()
		idle := c.idleLocked(now)
		c.mu.Unlock()
		if !idle {
			ct.hand++
			continue
		}
		// The last state takes c's place, and is checked next.
		last := ct.list[len(ct.list)-1]
		last.idx = c.idx
		ct.list[c.idx] = last
		ct.list[len(ct.list)-1] = nil
		ct.list = ct.list[:len(ct.list)-1]
		delete(ct.m, c.key)
	}
}

// len returns the number of keys held.
func (ct *connTable) len() int {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	return len(ct.list)
}

// put gives back a reference that get returned.
func (c *connState) put() {
	c.mu.Lock()
	c.refs--
	c.mu.Unlock()
}
