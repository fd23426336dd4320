package limiter

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newTestGroup(t *testing.T, limit int, window time.Duration, opts ...Option) (*Group, *ManualClock) {
	t.Helper()
	c := NewManualClock(t0)
	g, err := NewGroup(limit, window, append([]Option{WithClock(c)}, opts...)...)
	require.NoError(t, err)
	return g, c
}

func TestNewGroupRejectsWhatNewRejects(t *testing.T) {
	for _, tc := range []struct {
		limit  int
		window time.Duration
		opts   []Option
	}{
		{0, time.Second, nil},
		{1, 0, nil},
		{1, time.Second, []Option{WithClock(nil)}},
		{10, time.Second, []Option{WithWindow(100, time.Second)}},
	} {
		g, err := NewGroup(tc.limit, tc.window, tc.opts...)
		assert.Error(t, err, "%d per %v", tc.limit, tc.window)
		assert.Nil(t, g)
	}
}

func TestGroupSameLimiterPerKey(t *testing.T) {
	g, _ := newTestGroup(t, 2, time.Minute)
	a := g.Get("a")
	require.NotNil(t, a)
	assert.Same(t, a, g.Get("a"))
	assert.NotSame(t, a, g.Get("b"))
	require.True(t, g.Allow("a"))
	assert.Equal(t, 1, a.Stats().InWindow, "Group.Allow counts on the limiter Get returned")
	assert.Equal(t, 0, g.Get("b").Stats().InWindow)
	st := a.Stats()
	assert.Equal(t, 2, st.Limit)
	assert.Equal(t, time.Minute, st.Window)
}

func TestGroupKeysIndependent(t *testing.T) {
	g, c := newTestGroup(t, 2, time.Minute, WithWindow(3, time.Hour))
	assert.True(t, g.Allow("a"))
	assert.True(t, g.Allow("a"))
	assert.False(t, g.Allow("a"), "a's third call in a minute")
	assert.True(t, g.Allow("b"), "b has its own quota")
	assert.True(t, g.Allow("b"))
	assert.False(t, g.Allow("b"))
	c.Advance(time.Minute)
	assert.True(t, g.Allow("a"), "a's window has slid")
	assert.False(t, g.Allow("a"), "the hourly rule of the options holds per key")
	assert.Equal(t, 2, g.Len())
}

func TestGroupDropsIdleKeys(t *testing.T) {
	const w = time.Minute
	g, c := newTestGroup(t, 5, w)
	require.True(t, g.Allow("a"))
	c.Advance(10 * time.Second)
	require.True(t, g.Allow("b"))
	a := g.Get("a")
	assert.Equal(t, 2, g.Len())

	c.Set(t0.Add(w - time.Nanosecond))
	assert.Equal(t, 2, g.Len(), "a's call still counts")
	c.Set(t0.Add(w))
	assert.Equal(t, 2, g.Len(), "a is idle, but Get returned it 10s after t0")
	c.Set(t0.Add(10*time.Second + w))
	assert.Equal(t, 0, g.Len(), "a and b idle, Get's grace over")
	assert.NotSame(t, a, g.Get("a"), "a dropped key gets a new limiter")
	assert.Equal(t, 1, g.Len())
}

func TestGroupKeepsBusyKeys(t *testing.T) {
	const w = time.Minute
	g, c := newTestGroup(t, 1, w)
	ctx := context.Background()

	g.Get("paused").PauseUntil(t0.Add(3 * w))
	p, err := g.Get("inflight").Acquire(ctx)
	require.NoError(t, err)

	require.True(t, g.Allow("waited"))
	done := make(chan error, 1)
	go func() { done <- g.Wait(ctx, "waited") }()
	blockUntil(t, c, 1)

	c.Advance(w - time.Nanosecond) // the waiter is not admitted yet
	assert.Equal(t, 3, g.Len())
	c.Advance(time.Nanosecond)
	require.NoError(t, recv(t, done))
	c.Advance(w)
	assert.Equal(t, 2, g.Len(), "waited: idle a window after its waiter was admitted")
	assert.Equal(t, 1, g.Get("inflight").Stats().InFlight, "the permit's limiter is the one kept")

	c.Advance(w)
	assert.Equal(t, 1, g.Len(), "paused until t0+3w, then idle")
	p.Done()
	assert.Equal(t, 1, g.Len(), "inflight: its call counts from Done")
	c.Advance(w)
	assert.Equal(t, 0, g.Len())
}

func TestGroupWait(t *testing.T) {
	const w = time.Minute
	g, c := newTestGroup(t, 1, w)
	ctx := context.Background()
	require.NoError(t, g.Wait(ctx, "a"), "the first call is admitted at once")
	done := make(chan error, 1)
	go func() { done <- g.Wait(ctx, "a") }()
	blockUntil(t, c, 1)
	select {
	case err := <-done:
		t.Fatalf("second Wait returned %v before the window slid", err)
	default:
	}
	require.NoError(t, g.Wait(ctx, "b"), "b does not wait for a")
	c.Advance(w)
	require.NoError(t, recv(t, done))
	assert.Equal(t, 1, g.Get("a").Stats().InWindow)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, g.Wait(cctx, "a"), context.Canceled)
}

func TestGroupGetGraceIsTheLongestWindow(t *testing.T) {
	g, c := newTestGroup(t, 50, time.Minute, WithWindow(5, time.Second))
	a := g.Get("a")
	c.Advance(time.Minute - time.Nanosecond)
	assert.Equal(t, 1, g.Len(), "Get's limiter is kept for the longest window")
	assert.Same(t, a, g.Get("a"))
	c.Advance(time.Minute)
	assert.Equal(t, 0, g.Len())
}

func TestGroupGetGraceIsABucketsDrain(t *testing.T) {
	g, c := newTestGroup(t, 50, time.Second, WithBucket(10, time.Second))
	a := g.Get("a")
	c.Advance(10*time.Second - time.Nanosecond)
	assert.Equal(t, 1, g.Len(), "Get's limiter is kept while a full bucket would drain")
	assert.Same(t, a, g.Get("a"))
	c.Advance(10 * time.Second)
	assert.Equal(t, 0, g.Len())
}

// TestGroupKept checks what a call that found a member before a sweep
// learns afterwards.
func TestGroupKept(t *testing.T) {
	g, c := newTestGroup(t, 5, time.Second)
	busy := g.find("busy")
	require.True(t, busy.l.Allow())
	idle := g.find("idle") // adding a key drops idle ones: busy is not
	assert.True(t, g.kept(idle))
	assert.True(t, g.kept(busy))
	assert.Equal(t, 1, g.Len())
	assert.False(t, g.kept(idle), "dropped: a call that used it must ask again")
	assert.True(t, g.kept(busy))
	assert.NotSame(t, idle, g.find("idle"))
	c.Advance(time.Second)
	assert.Equal(t, 0, g.Len())
	assert.False(t, g.kept(busy))
}

// held returns the keys g holds, without the upkeep that Len does.
func held(g *Group) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held
}

// TestGroupSweepsWithoutLen checks that normal calls drop idle keys, so
// that a group that sees ever new keys stays small.
func TestGroupSweepsWithoutLen(t *testing.T) {
	const w = time.Second
	g, c := newTestGroup(t, 1, w)
	keep := g.Get("kept")
	for i := range 5000 {
		require.True(t, g.Allow("k"+strconv.Itoa(i)))
		require.Same(t, keep, g.Get("kept"), "Get within a window of the last Get")
		c.Advance(w / 2)
	}
	// In use: kept, and the last two keys, whose calls still count.
	assert.LessOrEqual(t, held(g), 2*3, "keys held after 5000 keys, three in use at a time")
	assert.LessOrEqual(t, g.cur.Load().len(), 32, "the table follows the keys: four slots a key at most")
}

// TestGroupWaitSweeps checks that a group whose keys stop changing still
// drops its idle keys as Wait is called on one that is in use.
func TestGroupWaitSweeps(t *testing.T) {
	g, c := newTestGroup(t, 1<<20, time.Second)
	for i := range 100 {
		require.True(t, g.Allow("k"+strconv.Itoa(i)))
	}
	c.Advance(time.Second)
	ctx := context.Background()
	require.Equal(t, 100, held(g))
	// A revolution of the hand over the table of 512 slots or fewer takes
	// 32 steps, about 2,000 calls: the odds of no revolution in 100,000
	// calls are below 1e-20.
	for i := 0; i < 100000 && held(g) > 1; i++ {
		require.NoError(t, g.Wait(ctx, "k0"))
	}
	assert.Equal(t, 1, held(g), "only the key in use is held")
}

// TestGroupConcurrentQuota runs Allow on a few keys from many goroutines
// while Len sweeps: with the clock frozen, no key admits more than its limit,
// so no sweep dropped a limiter that had admitted a call.
func TestGroupConcurrentQuota(t *testing.T) {
	const limit, keys, workers = 3, 20, 8
	g, _ := newTestGroup(t, limit, time.Minute)
	var admitted [keys]atomic.Int32
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				g.Len()
			}
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				k := (i*7 + w) % keys
				if g.Allow("key" + strconv.Itoa(k)) {
					admitted[k].Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	for k := range admitted {
		assert.Equal(t, limit, int(admitted[k].Load()), "key%d", k)
	}
}

func TestGroupZeroValuePanics(t *testing.T) {
	var g Group
	ctx := context.Background()
	for name, call := range map[string]func(){
		"Allow": func() { g.Allow("a") },
		"Wait":  func() { _ = g.Wait(ctx, "a") },
		"Get":   func() { g.Get("a") },
		"Len":   func() { g.Len() },
	} {
		assert.PanicsWithValue(t, errZeroGroup, call, name)
	}
}

// idleKeys returns a group holding n keys with one call each, all of
// them idle: the window has passed.
func idleKeys(t *testing.T, n int) (*Group, *ManualClock) {
	t.Helper()
	g, c := newTestGroup(t, 5, time.Second)
	for i := range n {
		require.True(t, g.Allow("idle"+strconv.Itoa(i)))
	}
	c.Advance(time.Second)
	require.Equal(t, n, held(g), "no key was idle while they were added")
	return g, c
}

// TestGroupAddSweepsBounded checks that a call adding a key drops a few
// idle keys, not all of them, and that calls adding keys go on until every
// idle key is dropped.
func TestGroupAddSweepsBounded(t *testing.T) {
	const n = 5000
	g, _ := idleKeys(t, n)
	require.True(t, g.Allow("new0"))
	dropped := n + 1 - held(g)
	assert.LessOrEqual(t, dropped, addStep+addStep/2, "one call examines a bounded number of keys")
	for i := 1; held(g) > i; i++ {
		require.Less(t, i, 10*n, "idle keys still held after %d new keys", i)
		require.True(t, g.Allow("new"+strconv.Itoa(i)))
	}
	assert.Less(t, g.cur.Load().len(), 4*n, "the table shrank as the idle keys went")
}

// TestGroupLenBounded checks that Len examines a bounded number of keys
// per call, and that calling it again and again sees idle keys go, and the
// table shrink back to its smallest size.
func TestGroupLenBounded(t *testing.T) {
	const n = 20000 // a table of chunks
	g, _ := idleKeys(t, n)
	size := g.cur.Load().len()
	first := g.Len()
	assert.GreaterOrEqual(t, first, n-lenStep, "one Len examines at most lenStep slots")
	assert.Less(t, first, n, "Len drops idle keys")
	for i := 0; g.Len() > 0; i++ {
		require.Less(t, i, 4*n/lenStep+1, "Len still counts idle keys after %d calls", i)
	}
	for i := 0; g.cur.Load().len() > minSlots || g.old.Load() != nil; i++ {
		// Each halving moves the table, lenStep slots a Len.
		require.Less(t, i, 2*size/lenStep+20, "table of %d slots after %d Len", g.cur.Load().len(), i)
		assert.Equal(t, 0, g.Len())
	}
}

// TestGroupGrowKeepsEveryLimiter checks that members moved into a larger
// table, a few slots at a time, keep their limiters and their counts.
func TestGroupGrowKeepsEveryLimiter(t *testing.T) {
	const n = 30000 // up to a table of chunks
	g, _ := newTestGroup(t, 2, time.Minute)
	ls := make([]*Limiter, n)
	for i := range ls {
		k := "k" + strconv.Itoa(i)
		require.True(t, g.Allow(k))
		ls[i] = g.Get(k)
		if i%16 == 0 { // every key added so far is found, during a move or not
			j := i / 2
			require.Same(t, ls[j], g.Get("k"+strconv.Itoa(j)), "key %d after %d keys", j, i)
		}
	}
	assert.Equal(t, n, held(g))
	assert.GreaterOrEqual(t, 3*g.cur.Load().len(), 4*n, "the table grew")
	require.NotNil(t, g.cur.Load().chunks, "the table is made of chunks")
	for i, l := range ls {
		k := "k" + strconv.Itoa(i)
		require.Same(t, l, g.Get(k), k)
		require.True(t, g.Allow(k), k)
		require.False(t, g.Allow(k), "%s: its first call still counts", k)
	}
}

// TestGroupConcurrentGrowAndSweep runs Allow over many keys from several
// goroutines while the table grows, moves and drops idle keys, in two
// phases with the clock frozen in each: in each phase every key admits
// exactly its limit, so no call was counted on a limiter that the group
// lost, and no key had two limiters at once.
func TestGroupConcurrentGrowAndSweep(t *testing.T) {
	for _, tc := range []struct{ limit, keys, rounds, lenEvery int }{
		{2, 3000, 3, 499},
		{1, 26000, 1, 4999}, // up to a table of chunks
	} {
		t.Run(strconv.Itoa(tc.keys), func(t *testing.T) {
			concurrentGrowAndSweep(t, tc.limit, tc.keys, tc.rounds, tc.lenEvery)
		})
	}
}

// concurrentGrowAndSweep has four goroutines call Allow on every key of
// keys, rounds times each, and Len every lenEvery calls, in two phases;
// see TestGroupConcurrentGrowAndSweep.
func concurrentGrowAndSweep(t *testing.T, limit, keys, rounds, lenEvery int) {
	const workers = 4
	g, c := newTestGroup(t, limit, time.Second)
	for phase := range 2 {
		admitted := make([]atomic.Int32, keys)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range rounds * keys {
					k := (i*7 + w*1009) % keys
					if g.Allow("key" + strconv.Itoa(k)) {
						admitted[k].Add(1)
					}
					if i%lenEvery == 0 {
						g.Len()
					}
				}
			}()
		}
		wg.Wait()
		for k := range admitted {
			require.Equal(t, min(limit, rounds*workers), int(admitted[k].Load()), "phase %d key%d", phase, k)
		}
		c.Advance(time.Second) // every key idle
	}
}

// TestGroupKeepsALimiterInUseThroughResizes checks that a limiter with a
// call in its window stays the key's limiter, after Get's grace, while
// every other key goes idle, is dropped, and the table shrinks, a move at
// a time, to its smallest size: its count is never lost.
func TestGroupKeepsALimiterInUseThroughResizes(t *testing.T) {
	const w = time.Minute
	g, c := newTestGroup(t, 2, w)
	for i := range 5000 {
		require.True(t, g.Allow("k"+strconv.Itoa(i)))
	}
	c.Advance(w / 2)
	l := g.Get("held") // its grace ends at t0+1.5w
	c.Advance(w / 4)
	require.True(t, g.Allow("held")) // counts until t0+1.75w
	c.Advance(3 * w / 4)
	for i := 0; g.cur.Load().len() > minSlots || g.old.Load() != nil; i++ {
		require.Less(t, i, 1000, "table of %d slots", g.cur.Load().len())
		g.Len()
	}
	assert.Equal(t, 1, g.Len())
	require.Same(t, l, g.Get("held"))
	assert.Equal(t, 1, l.Stats().InWindow)
	require.True(t, g.Allow("held"))
	assert.False(t, g.Allow("held"), "the first call still counts: limit 2")
	assert.Equal(t, 2, l.Stats().InWindow, "Group.Allow counted on the limiter Get returned")
}

func TestGroupLenExactForAFewThousandKeys(t *testing.T) {
	g, _ := idleKeys(t, 3000)
	require.LessOrEqual(t, g.cur.Load().len(), lenStep)
	assert.Equal(t, 0, g.Len(), "one Len drops every idle key of a table of lenStep slots")
}

func TestGroupKeepsAKeyWhileItsBucketHoldsCalls(t *testing.T) {
	g, c := newTestGroup(t, 100, time.Second, WithBucket(2, time.Minute))
	require.True(t, g.Allow("a"))
	c.Advance(time.Minute - time.Nanosecond)
	assert.Equal(t, 1, g.Len(), "out of the window, still in the bucket")
	c.Advance(time.Nanosecond)
	assert.Equal(t, 0, g.Len(), "the bucket has drained")
}
