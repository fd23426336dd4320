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

// TestGroupKept checks what a call that found a member before a sweep
// learns afterwards.
func TestGroupKept(t *testing.T) {
	g, c := newTestGroup(t, 5, time.Second)
	idle := g.find("idle")
	busy := g.find("busy")
	require.True(t, busy.l.Allow())
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
	g.mu.Lock()
	n := len(g.list)
	g.mu.Unlock()
	assert.LessOrEqual(t, n, 2*minSweep+2, "keys held after 5000 keys, one in use at a time")
	assert.LessOrEqual(t, len(g.read.Load().slots), 4*n, "the published table shrank with the keys")
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
	held := func() int {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.list)
	}
	require.Equal(t, 100, held())
	// The odds of no sweep in 100,000 calls are below 1e-20.
	for i := 0; i < 100000 && held() > 1; i++ {
		require.NoError(t, g.Wait(ctx, "k0"))
	}
	assert.Equal(t, 1, held(), "only the key in use is held")
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

func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "api-" + strconv.Itoa(i) + ".example.com"
	}
	return keys
}

func BenchmarkGroupAllow(b *testing.B) {
	const live = 10000
	keys := benchKeys(live)
	b.Run("Limiter", func(b *testing.B) {
		l, err := New(DefaultLimit, DefaultWindow)
		if err != nil {
			b.Fatal(err)
		}
		for l.Allow() {
		}
		b.ReportAllocs()
		for b.Loop() {
			l.Allow()
		}
	})
	b.Run("Limiters=10000", func(b *testing.B) {
		ls := make([]*Limiter, live)
		for i := range ls {
			ls[i], _ = New(DefaultLimit, DefaultWindow)
			for ls[i].Allow() {
			}
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			ls[i].Allow()
			if i++; i == live {
				i = 0
			}
		}
	})
	b.Run("Group/keys=10000/same", func(b *testing.B) {
		g, err := NewGroup(DefaultLimit, DefaultWindow)
		if err != nil {
			b.Fatal(err)
		}
		for _, k := range keys {
			for g.Allow(k) {
			}
		}
		k := keys[live/2]
		b.ReportAllocs()
		for b.Loop() {
			g.Allow(k)
		}
	})
	b.Run("Group/keys=10000/parallel", func(b *testing.B) {
		g, err := NewGroup(DefaultLimit, DefaultWindow)
		if err != nil {
			b.Fatal(err)
		}
		for _, k := range keys {
			for g.Allow(k) {
			}
		}
		var seq atomic.Int64
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := int(seq.Add(7919)) % live
			for pb.Next() {
				g.Allow(keys[i])
				if i++; i == live {
					i = 0
				}
			}
		})
	})
	b.Run("Group/keys=10000/cycle", func(b *testing.B) {
		g, err := NewGroup(DefaultLimit, DefaultWindow)
		if err != nil {
			b.Fatal(err)
		}
		for _, k := range keys {
			for g.Allow(k) {
			}
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			g.Allow(keys[i])
			if i++; i == live {
				i = 0
			}
		}
	})
}
