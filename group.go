package limiter

import (
	"context"
	"hash/maphash"
	"math"
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// The upkeep of a Group, dropping idle limiters and moving members into a
// resized table, is spread over calls in steps of a few slots, so that no
// call does work that grows with the number of keys held.
const (
	// addStep: slots of a table being replaced that a call adding a key
	// moves, and twice the slots of the table that it examines for idle
	// members. Sixteen moves per added key finish a move before the new
	// table is full (see growLocked); eight examined slots keep the idle
	// keys held below half the keys in use (see Group).
	addStep = 16
	// tendStep slots are examined, with odds 1 in tendOdds, after an
	// admitted call on a key the group holds: about a quarter of a slot
	// per admitted call, and a Group whose keys stop changing still lets
	// go of its idle keys.
	tendStep = 16
	tendOdds = 64 // a power of two
	// lenStep slots are examined by each Len, 0.2 ms of work at most:
	// Len is exact for a table of up to lenStep slots, a few thousand keys.
	lenStep = 4096
	// minSlots is the smallest table: Len and a call adding a key then
	// examine every slot.
	minSlots = 16
)

// A Group keeps one Limiter per connection key (a host, a credential, a
// tenant), each with the rules and options given to NewGroup. A key's
// Limiter is made on its first use and dropped once it is idle: nothing in
// any window, nothing in flight, no waiter and no pause, and not returned
// by Get within the longest window of the rules.
//
// Idle limiters are dropped lazily, a few at a time, so that no call does
// work that grows with the number of keys: each call that adds a key
// examines a few keys for idleness, so that a Group that sees ever new
// keys holds those in use and, measured, at most half as many again; one
// admitted call in a few dozen examines a few more, so that a Group whose
// keys stop changing lets go of its idle keys too, slowly; and each Len
// examines a few thousand, so that calling Len now and then also bounds
// the memory of a large Group whose keys went idle. No goroutine runs in
// the background. A call that looks up a key the Group holds takes no
// lock, so calls on different keys do not contend, and it allocates
// nothing.
//
// Allow and Wait on a Group behave like the same calls on the key's
// Limiter. Get returns the Limiter itself, for Acquire, Stats or
// PauseUntil.
//
// Make a Group with NewGroup; the zero value is not usable, and its
// methods panic. A Group is safe for concurrent use.
type Group struct {
	mu sync.Mutex
	// Guarded by mu; the tables too are changed only with mu held.
	held  int // members in cur, and in the part of old not yet moved
	moved int // slots of old already moved into cur
	hand  int // the slot of cur that the sweep examines next

	// cur holds the group's members. old, when not nil, is the table cur
	// replaces: its members move into cur a few at each step of upkeep,
	// and it is never changed. Lookups read both without a lock, cur
	// first.
	cur atomic.Pointer[memberTable]
	old atomic.Pointer[memberTable]

	// Set by NewGroup, read-only after.
	seed  maphash.Seed // of every key's hash
	cfg   *config
	epoch time.Time     // Get instants are durations since epoch on cfg.clock
	grace time.Duration // the longest window of the rules, or drain of a full bucket
}

// member is one key's Limiter in a Group: 32 bytes.
type member struct {
	l   *Limiter
	key string

	// word holds, as got<<2 | state, the instant at which Get last
	// returned l, as a duration since Group.epoch (noGet: never), and the
	// member's state, which tells a caller that used l after finding the
	// member without the lock whether l still belongs to the group. A
	// sweep sets sweeping, then checks that l is idle, then sets live or
	// dropped, each by a compare-and-swap that fails if Get wrote got
	// since. Group.mu is held throughout, so a caller that reads sweeping
	// waits for the lock and reads again.
	word atomic.Int64
}

const (
	memberLive int64 = iota
	memberSweeping
	memberDropped
	stateMask = 3
)

// noGet is the got of a member whose limiter Get never returned.
const noGet = math.MinInt64 >> 2

// packGot returns the word of got and state; got is clamped to what fits.
func packGot(got time.Duration, state int64) int64 {
	return int64(min(max(got, noGet+1), math.MaxInt64>>2))<<2 | state
}

func (e *member) state() int64 { return e.word.Load() & stateMask }

// errZeroGroup is the panic of a method called on a Group not made by
// NewGroup.
const errZeroGroup = "limiter: Group used without NewGroup; the zero Group is not usable"

// NewGroup returns a Group whose limiters each admit at most limit calls in
// any interval of length window and obey the options, as New would make
// them. It returns an error, and no Group, when New would.
func NewGroup(limit int, window time.Duration, opts ...Option) (*Group, error) {
	cfg, err := newConfig(limit, window, opts)
	if err != nil {
		return nil, err
	}
	g := &Group{
		seed:  maphash.MakeSeed(),
		cfg:   cfg,
		epoch: cfg.clock.Now(),
	}
	for _, r := range cfg.rules {
		g.grace = max(g.grace, r.size)
	}
	for _, b := range cfg.buckets {
		g.grace = max(g.grace, mulSat(b.burst, b.every)) // a full bucket's drain
	}
	g.cur.Store(newMemberTable(minSlots))
	return g, nil
}

// Get returns the Limiter of key, making it if the key has none. It
// returns the same *Limiter for a key while that limiter is in use (a call
// in one of its windows or buckets, a permit in flight, a waiter, a
// pause), so no count is ever lost, and for at least the longest window
// of the rules after Get last returned it, so a caller may Get a limiter
// and use it soon after. A limiter kept longer and left idle may have
// been dropped; its later calls then no longer count for the key. Call
// Get for each use rather than keeping its result.
func (g *Group) Get(key string) *Limiter {
	for {
		e := g.find(key)
		if g.touch(e, g.since()) {
			return e.l
		}
	}
}

// touch records that Get returns e's limiter at now, and reports whether e
// still belongs to the group. A sweep deciding on e finds got changed and
// keeps e; when got was already now, touch waits for the sweep's decision.
func (g *Group) touch(e *member, now time.Duration) bool {
	for {
		w := e.word.Load()
		if w&stateMask == memberDropped {
			return false
		}
		if e.word.CompareAndSwap(w, packGot(now, w&stateMask)) {
			return g.kept(e)
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
			g.tend()
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
			g.tend()
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
			g.tend()
			return p, e.l, nil
		}
		p.Cancel() // the limiter was dropped as it granted the permit; see Allow
	}
}

// Len returns the number of keys the Group holds a Limiter for: those in
// use, those Get returned less than the longest window ago, and idle ones
// not dropped yet. Each Len first examines a bounded number of keys, a few
// thousand, and drops the idle ones, so it is exact for a small Group, and
// after many keys go idle, calling Len again and again sees the count fall
// to the keys in use; no call examines them all.
func (g *Group) Len() int {
	if g.cfg == nil {
		panic(errZeroGroup)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.upkeepLocked(lenStep)
	return g.held
}

// find returns the member of key, adding one if there is none. A member
// found without the lock may be dropped by the time the caller uses it;
// kept tells.
//
// The lookup in a flat table is written out here, not a call of get: it
// is the path of every call on a key the group holds.
func (g *Group) find(key string) *member {
	if g.cfg == nil {
		panic(errZeroGroup)
	}
	h := maphash.String(g.seed, key)
	if t := g.cur.Load(); t.flat != nil {
		for i := h & t.mask; ; i = (i + 1) & t.mask {
			s := &t.flat[i]
			e := s.e.Load()
			if e == nil {
				break
			}
			if s.hash.Load() == h && e != tombstone && e.key == key {
				if e.state() != memberDropped {
					return e
				}
				break
			}
		}
	}
	return g.findSlow(key, h)
}

// findSlow is find for a key not found in a flat cur: in a table of
// chunks, in old, or not held.
func (g *Group) findSlow(key string, h uint64) *member {
	if t := g.cur.Load(); t.flat == nil {
		if e := t.get(key, h); e != nil && e.state() != memberDropped {
			return e
		}
	}
	if old := g.old.Load(); old != nil {
		if e := old.get(key, h); e != nil && e.state() != memberDropped {
			return e
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.lookupLocked(key, h); e != nil {
		return e // added or moved since the first look
	}
	return g.addLocked(key, h)
}

// lookupLocked returns the live member of key, or nil. cur holds no dropped
// member, old may: a member of old that was moved into cur and then
// dropped. g.mu must be held.
func (g *Group) lookupLocked(key string, h uint64) *member {
	if e := g.cur.Load().get(key, h); e != nil {
		return e
	}
	if old := g.old.Load(); old != nil {
		if e := old.get(key, h); e != nil && e.state() != memberDropped {
			return e
		}
	}
	return nil
}

// addLocked adds a member for key, whose hash is h, after a step of
// upkeep. g.mu must be held.
func (g *Group) addLocked(key string, h uint64) *member {
	now := g.since()
	g.moveLocked(addStep, now)
	if cur := g.cur.Load(); 4*(cur.used+1) > 3*cur.len() {
		// By the sizes grow picks, a move is over before this happens; if
		// it were not, finishing it first keeps every probe short.
		g.moveLocked(math.MaxInt, now)
		g.growLocked()
		g.moveLocked(addStep, now)
	}
	g.sweepLocked(addStep/2, now)
	e := &member{l: newLimiter(g.cfg), key: key}
	e.word.Store(packGot(noGet, memberLive))
	g.cur.Load().put(e, h)
	g.held++
	return e
}

// tend does a step of upkeep with odds 1 in tendOdds, unless another call
// holds the lock: lookups do not need it.
func (g *Group) tend() {
	if rand.Uint32()&(tendOdds-1) != 0 || !g.mu.TryLock() {
		return
	}
	g.upkeepLocked(tendStep)
	g.mu.Unlock()
}

// upkeepLocked moves up to n slots of a table being replaced, examines up
// to n slots of the table for idle members, and starts replacing the table
// with one half its size when it has become mostly empty. g.mu must be
// held.
func (g *Group) upkeepLocked(n int) {
	now := g.since()
	g.moveLocked(n, now)
	g.sweepLocked(n, now)
	if cur := g.cur.Load(); g.old.Load() == nil && cur.len() > minSlots && 8*g.held < cur.len() {
		g.growLocked()
	}
}

// growLocked starts replacing cur with a table sized to the members held,
// two slots or more to one, by half or double the size of cur at most; cur
// becomes old, which moveLocked empties into the new table. No move is
// under way.
//
// A move of S slots at addStep per added key is over after S/16 added
// keys. The new table, of S2 >= S/2 slots, starts with at most S2/2
// members and receives at most S/16 <= S2/8 new ones meanwhile: it stays
// below the 3/4 full that makes a table grow, so no second move is ever
// needed during a move. g.mu must be held.
func (g *Group) growLocked() {
	cur := g.cur.Load()
	n := 1 << bits.Len(uint(2*(g.held+1)-1)) // the power of two >= 2*(held+1)
	n = min(max(n, cur.len()/2, minSlots), 2*cur.len())
	g.old.Store(cur) // before cur, so that a lookup always finds one of them
	g.cur.Store(newMemberTable(n))
	g.moved, g.hand = 0, 0
}

// moveLocked moves up to n slots of old into cur, dropping idle members
// rather than moving them, and forgets old once every slot has moved. A
// moved member stays in old too, for the lookups under way. g.mu must be
// held.
func (g *Group) moveLocked(n int, now time.Duration) {
	old := g.old.Load()
	if old == nil {
		return
	}
	cur := g.cur.Load()
	for ; n > 0 && g.moved < old.len(); n-- {
		s := old.at(uint64(g.moved))
		g.moved++
		if s == nil {
			continue
		}
		e := s.e.Load()
		switch {
		case e == nil || e == tombstone || e.state() == memberDropped:
		case g.dropIdleLocked(e, now):
			g.held--
		default:
			cur.put(e, s.hash.Load())
		}
	}
	if g.moved == old.len() {
		g.old.Store(nil)
	}
}

// sweepLocked examines up to n slots of cur, from the hand on, and drops
// the idle members it finds. g.mu must be held.
func (g *Group) sweepLocked(n int, now time.Duration) {
	t := g.cur.Load()
	for n = min(n, t.len()); n > 0; n-- {
		s := t.at(uint64(g.hand))
		g.hand = (g.hand + 1) & int(t.mask)
		if s == nil {
			continue
		}
		if e := s.e.Load(); e != nil && e != tombstone && g.dropIdleLocked(e, now) {
			s.e.Store(tombstone)
			g.held--
		}
	}
}

// kept reports whether e still belongs to the group, after waiting for a
// sweep that is deciding.
func (g *Group) kept(e *member) bool {
	switch e.state() {
	case memberLive:
		return true
	case memberSweeping:
		g.mu.Lock() // held by the sweep until it has decided
		st := e.state()
		g.mu.Unlock()
		return st == memberLive
	}
	return false
}

// dropIdleLocked marks e dropped and reports true if its limiter is idle
// and Get has not returned it within the grace. g.mu must be held, so
// that e is live or dropped here.
func (g *Group) dropIdleLocked(e *member, now time.Duration) bool {
	w := e.word.Load()
	if w&stateMask != memberLive || !g.graceOver(w, now) ||
		!e.word.CompareAndSwap(w, w|memberSweeping) {
		return false
	}
	// Callers that found e now wait for the decision, or have counted on
	// e.l before the check of idle below, which then sees it.
	if e.l.idle() && e.word.CompareAndSwap(w|memberSweeping, w|memberDropped) {
		return true
	}
	for { // live again, with the got that a Get may have written
		x := e.word.Load()
		if e.word.CompareAndSwap(x, x&^stateMask) {
			return false
		}
	}
}

// graceOver reports whether the got of word w is at least the longest
// window before now, or never. A clock set back keeps the member.
func (g *Group) graceOver(w int64, now time.Duration) bool {
	got := time.Duration(w >> 2)
	return got == noGet || (now >= got && now-got >= g.grace)
}

// since reads the group's clock as a duration since its epoch.
func (g *Group) since() time.Duration {
	return g.cfg.clock.Now().Sub(g.epoch)
}

// memberTable is a hash table of members by key, with open addressing and
// linear probing, that lookups read without a lock while one writer, under
// Group.mu, adds members and replaces dropped ones by tombstone. Slots
// keep the hash, so a probe reads only the member it finds, and four
// share a cache line, so a table up to 3/4 full (members and tombstones)
// is both small, which is what makes lookups among many keys fast, and
// quick to probe; a probe always ends at an empty slot. A
// slot, once used, is never empty again, so a probe that passed it is not
// misled; a lookup that misses a member being added takes the lock and
// looks again.
//
// A table of up to maxFlat slots is one array. A larger one is made of
// chunks, each made on the first write into it, so that making a table
// takes time that does not grow with its size: the runtime zeroes what it
// allocates.
type memberTable struct {
	flat   []memberSlot                  // all the slots, or nil
	chunks []atomic.Pointer[memberChunk] // or the slots by chunk; nil: all empty
	mask   uint64                        // the number of slots, a power of two, minus 1
	used   int                           // slots not empty; guarded by Group.mu
}

const (
	maxFlat    = 1 << 15 // slots: 512 KiB
	chunkBits  = 12
	chunkSlots = 1 << chunkBits // 64 KiB
)

type memberChunk [chunkSlots]memberSlot

// memberSlot is empty while e is nil. The writer stores hash before e, so
// a lookup that loads e and then hash sees e's hash, or, when the slot was
// taken over since, a hash that makes it probe on.
type memberSlot struct {
	hash atomic.Uint64
	e    atomic.Pointer[member]
}

// tombstone takes the place of a dropped member in its slot.
var tombstone = new(member)

// newMemberTable returns an empty table of n slots, a power of two.
func newMemberTable(n int) *memberTable {
	t := &memberTable{mask: uint64(n - 1)}
	if n <= maxFlat {
		t.flat = make([]memberSlot, n)
	} else {
		t.chunks = make([]atomic.Pointer[memberChunk], n/chunkSlots)
	}
	return t
}

func (t *memberTable) len() int { return int(t.mask) + 1 }

// at returns slot i, or nil when its chunk is not made: then it is empty.
func (t *memberTable) at(i uint64) *memberSlot {
	if t.flat != nil {
		return &t.flat[i]
	}
	if c := t.chunks[i>>chunkBits].Load(); c != nil {
		return &c[i&(chunkSlots-1)]
	}
	return nil
}

// get returns the member of key, whose hash is h, or nil.
func (t *memberTable) get(key string, h uint64) *member {
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		s := t.at(i)
		if s == nil {
			return nil
		}
		e := s.e.Load()
		if e == nil || s.hash.Load() == h && e != tombstone && e.key == key {
			return e
		}
	}
}

// put adds e, whose hash is h, in the first slot of its probe sequence that
// is empty or a tombstone, making its chunk if need be. The key must not
// be in t. Group.mu must be held.
func (t *memberTable) put(e *member, h uint64) {
	for i := h & t.mask; ; i = (i + 1) & t.mask {
		s := t.at(i)
		if s == nil {
			c := new(memberChunk)
			t.chunks[i>>chunkBits].Store(c)
			s = &c[i&(chunkSlots-1)]
		}
		if x := s.e.Load(); x == nil || x == tombstone {
			if x == nil {
				t.used++
			}
			s.hash.Store(h)
			s.e.Store(e)
			return
		}
	}
}
