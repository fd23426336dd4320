package limiter

import (
	"context"
	"hash/maphash"
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// minSweep is the number of new keys after which a Group first looks for
// idle limiters to drop; after that it looks again each time the keys it
// holds have grown by half, so the work of a sweep is paid for by the
// insertions before it.
const minSweep = 64

// sweepOdds: Wait, and the Transport's acquisitions, sweep with odds of 1
// in sweepOdds times the keys held, so that a group whose keys stop
// changing lets go of its idle limiters too, at a cost per call of about
// 1/sweepOdds of one limiter's idle check.
const sweepOdds = 16

// A Group keeps one Limiter per connection key (a host, a credential, a
// tenant), each with the rules and options given to NewGroup. A key's
// Limiter is made on its first use and dropped once it is idle: nothing in
// any window, nothing in flight, no waiter and no pause, and not returned
// by Get within the longest window of the rules. Idle limiters are
// dropped lazily: by the calls that add new keys, so that the Group holds
// the keys in use and at most about half as many again, plus a few dozen;
// now and then by Wait and by a Transport's requests, so that a Group whose
// keys stop changing lets go of idle keys too; and by Len. No goroutine
// runs in the background. Allow, the fastest call, sweeps only when it
// adds a key.
//
// Allow and Wait on a Group behave like the same calls on the key's
// Limiter; looking up a key that the Group already holds normally takes no
// lock, so calls on different keys do not contend. Get returns the Limiter
// itself, for Acquire, Stats or PauseUntil.
//
// A Group is safe for concurrent use.
type Group struct {
	mu      sync.Mutex
	list    []*member          // every member: the authority for what the group holds
	dirty   map[string]*member // the members of list that read lacks
	misses  int                // lookups that found no member in read since it was published
	inserts int                // members added since the last sweep

	// read holds the members as of its publication; lookups use it
	// without a lock. It is replaced, never changed.
	read atomic.Pointer[memberTable]

	// Set by NewGroup, read-only after.
	seed  maphash.Seed // of every member's hash
	cfg   *config
	epoch time.Time     // Get instants are durations since epoch on cfg.clock
	grace time.Duration // the longest window of the rules
}

// member is one key's Limiter in a Group.
type member struct {
	l    *Limiter
	key  string
	hash uint64 // of key, with Group.seed

	// state tells a caller that used l after finding the member in a
	// published map whether l still belongs to the group. A sweep sets
	// sweeping, then checks that l is idle, then sets live or dropped.
	// Group.mu is held throughout, so a caller that reads sweeping waits
	// for the lock and reads again.
	state atomic.Int32

	// got is the instant, as a duration since Group.epoch, at which Get
	// last returned l, or noGet.
	got atomic.Int64
}

const (
	memberLive int32 = iota
	memberSweeping
	memberDropped
)

const noGet = -1 << 63

// NewGroup returns a Group whose limiters each admit at most limit calls in
// any interval of length window and obey the options, as New would make
// them. It returns an error, and no Group, when New would.
func NewGroup(limit int, window time.Duration, opts ...Option) (*Group, error) {
	cfg, err := newConfig(limit, window, opts)
	if err != nil {
		return nil, err
	}
	g := &Group{
		dirty: make(map[string]*member),
		seed:  maphash.MakeSeed(),
		cfg:   cfg,
		epoch: cfg.clock.Now(),
	}
	for _, r := range cfg.rules {
		g.grace = max(g.grace, r.size)
	}
	g.read.Store(&memberTable{})
	return g, nil
}

// Get returns the Limiter of key, making it if the key has none. It
// returns the same *Limiter for a key while that limiter is in use, and
// for at least the longest window of the rules after Get last returned
// it, so a caller may Get a limiter and use it soon after. A limiter kept
// longer and left idle may have been dropped; its later calls then no
// longer count for the key. Call Get for each use rather than keeping its
// result.
func (g *Group) Get(key string) *Limiter {
	now := g.since()
	for {
		e := g.find(key)
		e.got.Store(int64(now))
		// A sweep reads got after announcing itself in state, and this
		// reads state after writing got: one of the two sees the other.
		if g.kept(e) {
			return e.l
		}
	}
}

// Allow reports whether a call for key may happen now, and if so counts
// it, as the key's Limiter.Allow does. It never blocks.
func (g *Group) Allow(key string) bool {
	for {
		e := g.find(key)
		if !e.l.Allow() {
			return false
		}
		if g.kept(e) {
			return true
		}
		// A sweep dropped the limiter, idle, just as Allow counted the
		// call on it: the count went with it. Ask the key's new limiter.
	}
}

// Wait blocks until a call for key is admitted, as the key's Limiter.Wait
// does, and returns its error.
func (g *Group) Wait(ctx context.Context, key string) error {
	for {
		e := g.find(key)
		if err := e.l.Wait(ctx); err != nil {
			return err
		}
		if g.kept(e) {
			g.maybeSweep()
			return nil
		}
		// Dropped as Wait counted the call at once; see Allow.
	}
}

// acquire is Acquire on the key's limiter, which it also returns, for the
// Transport to pause. While the permit is in flight the limiter is in use.
func (g *Group) acquire(ctx context.Context, key string) (Permit, *Limiter, error) {
	for {
		e := g.find(key)
		p, err := e.l.Acquire(ctx)
		if err != nil {
			return nil, nil, err
		}
		if g.kept(e) {
			g.maybeSweep()
			return p, e.l, nil
		}
		p.Cancel() // the limiter was dropped as it granted the permit; see Allow
	}
}

// Len returns the number of keys the Group holds a Limiter for. It drops
// every idle limiter first, so it counts the keys in use and those Get
// returned less than the longest window ago.
func (g *Group) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sweepLocked()
	return len(g.list)
}

// find returns the member of key, adding one if there is none.
func (g *Group) find(key string) *member {
	h := maphash.String(g.seed, key)
	if e := g.read.Load().get(key, h); e != nil {
		return e
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.read.Load().get(key, h); e != nil {
		return e // published since the first look
	}
	e := g.dirty[key]
	if e == nil {
		if g.inserts++; g.inserts >= max(minSweep, len(g.list)/2) {
			g.sweepLocked()
		}
		e = &member{l: newLimiter(g.cfg), key: key, hash: h}
		e.got.Store(noGet)
		g.dirty[key] = e
		g.list = append(g.list, e)
	}
	// Publishing copies every member; it waits until as many lookups have
	// missed read, so that lookups pay for it.
	if g.misses++; g.misses >= len(g.list) {
		g.publishLocked()
	}
	return e
}

// maybeSweep sweeps the group with odds of 1 in sweepOdds times the keys
// held, if the lock is free; lookups do not need it.
func (g *Group) maybeSweep() {
	n := uint64(len(g.read.Load().slots)) // about twice the keys held
	if rand.Uint64N(sweepOdds/2*n+1) != 0 || !g.mu.TryLock() {
		return
	}
	g.sweepLocked()
	g.mu.Unlock()
}

// kept reports whether e still belongs to the group, after waiting for a
// sweep that is deciding.
func (g *Group) kept(e *member) bool {
	switch e.state.Load() {
	case memberLive:
		return true
	case memberSweeping:
		g.mu.Lock() // held by the sweep until it has decided
		st := e.state.Load()
		g.mu.Unlock()
		return st == memberLive
	}
	return false
}

// sweepLocked drops every idle member and publishes the rest. g.mu must
// be held.
func (g *Group) sweepLocked() {
	g.inserts = 0
	now := g.since()
	dropped := false
	// Down the list: the member that takes a dropped one's place comes
	// from the end, which has been looked at already.
	for i := len(g.list) - 1; i >= 0; i-- {
		if e := g.list[i]; g.dropIdleLocked(e, now) {
			delete(g.dirty, e.key)
			last := len(g.list) - 1
			g.list[i] = g.list[last]
			g.list[last] = nil
			g.list = g.list[:last]
			dropped = true
		}
	}
	if dropped {
		g.publishLocked()
	}
}

// dropIdleLocked marks e dropped and reports true if its limiter is idle
// and Get has not returned it within the grace. g.mu must be held.
func (g *Group) dropIdleLocked(e *member, now time.Duration) bool {
	if !g.graceOver(e, now) {
		return false
	}
	e.state.Store(memberSweeping)
	if !g.graceOver(e, now) || !e.l.idle() {
		e.state.Store(memberLive)
		return false
	}
	e.state.Store(memberDropped)
	return true
}

// graceOver reports whether Get last returned e's limiter at least the
// longest window before now, or never. A clock set back keeps the member.
func (g *Group) graceOver(e *member, now time.Duration) bool {
	got := time.Duration(e.got.Load())
	return got == noGet || (now >= got && now-got >= g.grace)
}

// publishLocked replaces read with a table of every member, sized to them,
// so that memory follows the keys held. g.mu must be held.
func (g *Group) publishLocked() {
	g.read.Store(newMemberTable(g.list))
	g.dirty = make(map[string]*member)
	g.misses = 0
}

// since reads the group's clock as a duration since its epoch.
func (g *Group) since() time.Duration {
	return g.cfg.clock.Now().Sub(g.epoch)
}

// memberTable is an immutable hash table of members by key, with open
// addressing and linear probing: a built-in map of 10,000 string keys
// costs about half of a Limiter.Allow to look up, this about a third.
// Slots keep the hash, so a probe reads only the member it finds. At most
// half of the slots are used, so a probe always ends at an empty slot.
type memberTable struct {
	slots []memberSlot // len is a power of two, or 0
	mask  uint64
}

type memberSlot struct {
	hash uint64
	e    *member // nil: empty
}

func newMemberTable(members []*member) *memberTable {
	if len(members) == 0 {
		return &memberTable{}
	}
	n := 1 << bits.Len(uint(2*len(members)-1)) // the power of two >= 2*len
	t := &memberTable{slots: make([]memberSlot, n), mask: uint64(n - 1)}
	for _, e := range members {
		i := e.hash & t.mask
		for t.slots[i].e != nil {
			i = (i + 1) & t.mask
		}
		t.slots[i] = memberSlot{e.hash, e}
	}
	return t
}

// get returns the member of key, whose hash is h, or nil.
func (t *memberTable) get(key string, h uint64) *member {
	if len(t.slots) == 0 {
		return nil
	}
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		if s.e == nil || s.hash == h && s.e.key == key {
			return s.e
		}
	}
}
