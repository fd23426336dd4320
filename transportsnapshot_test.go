package limiter

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	huntingRoute   = "POST /api/advancedqueries/run"
	incidentsRoute = "/api/incidents"
	machinesRoute  = "/api/machines/"
)

// defenderTransport returns a Transport with Defender's tenant rule and
// routes, registered in the order given, on a ManualClock at start.
func defenderTransport(tb testing.TB, start time.Time, routes ...string) (*Transport, *fakeRT, *ManualClock) {
	tb.Helper()
	c := NewManualClock(start)
	l, err := New(100, time.Minute, WithWindow(1500, time.Hour), WithClock(c))
	require.NoError(tb, err)
	f := &fakeRT{clock: c, reply: replies(answer(200))}
	tr := NewTransport(f, l)
	limits := map[string]int{huntingRoute: 45, incidentsRoute: 50, machinesRoute: 10, "/other/": 5}
	for _, p := range routes {
		require.NoError(tb, tr.Route(p, limits[p], time.Minute))
	}
	return tr, f, c
}

// routeByPattern returns the limiter of the route registered with pattern,
// or nil when no request has used it.
func routeByPattern(tb testing.TB, tr *Transport, pattern string) *Limiter {
	tb.Helper()
	i := tr.routes.Load().index(pattern)
	require.GreaterOrEqual(tb, i, 0, pattern)
	if rs := tr.single.routeList(); i < len(rs) {
		return rs[i].l
	}
	return nil
}

func send(tb testing.TB, tr *Transport, method, path string, n int) {
	tb.Helper()
	for range n {
		req, err := http.NewRequest(method, "https://api.security.microsoft.com"+path, http.NoBody)
		require.NoError(tb, err)
		resp, err := tr.RoundTrip(req)
		require.NoError(tb, err)
		require.Equal(tb, 200, resp.StatusCode)
	}
}

// spend makes the calls of a job that ran from t0 to t0+20s: 45 hunting
// queries (their route is full), 30 incidents, 5 alerts (no route).
func spend(tb testing.TB, tr *Transport, c *ManualClock) {
	tb.Helper()
	send(tb, tr, http.MethodPost, "/api/advancedqueries/run", 45)
	c.Advance(10 * time.Second)
	send(tb, tr, http.MethodGet, "/api/incidents", 30)
	c.Advance(5 * time.Second)
	send(tb, tr, http.MethodGet, "/api/alerts", 5)
	c.Advance(5 * time.Second)
}

// A restored Transport admits and refuses exactly as the original does,
// on the connection's rule and on each route's, instant by instant.
func TestTransportSnapshotRestoresRoutes(t *testing.T) {
	tr, _, c := defenderTransport(t, t0, huntingRoute, incidentsRoute, machinesRoute)
	spend(t, tr, c)
	data, err := tr.MarshalBinary()
	require.NoError(t, err)

	// A new process at the same wall-clock time, its routes registered in
	// another order.
	tr2, _, c2 := defenderTransport(t, c.Now(), machinesRoute, incidentsRoute, huntingRoute)
	require.NoError(t, tr2.UnmarshalBinary(data))
	assert.Nil(t, routeByPattern(t, tr2, machinesRoute), "never used: not in the snapshot")

	limiters := func(tr *Transport) [3]*Limiter {
		return [3]*Limiter{tr.lim, routeByPattern(t, tr, huntingRoute), routeByPattern(t, tr, incidentsRoute)}
	}
	orig, restored := limiters(tr), limiters(tr2)
	for i := range restored {
		require.NotNil(t, restored[i], "limiter %d", i)
	}
	for _, at := range []time.Duration{
		20 * time.Second, time.Minute - 1, time.Minute, 70*time.Second - 1, 70 * time.Second,
		75*time.Second - 1, 75 * time.Second, 80 * time.Second, time.Hour - 1, time.Hour, 2 * time.Hour,
	} {
		c.Set(t0.Add(at))
		c2.Set(t0.Add(at))
		for i := range orig {
			want := orig[i].Remaining()
			assert.Equal(t, want, restored[i].Remaining(), "limiter %d at t0+%v", i, at)
			assert.Equal(t, orig[i].Allow(), restored[i].Allow(), "limiter %d at t0+%v", i, at)
		}
		switch at {
		case 20 * time.Second:
			assert.Equal(t, 20, restored[0].Remaining()+1, "the connection: 80 calls, and the Allow just made")
			assert.Equal(t, 0, restored[1].Remaining(), "the hunting route is full")
		case time.Minute - 1:
			assert.Equal(t, 0, restored[1].Remaining(), "the hunting route is full")
		case time.Minute:
			assert.Equal(t, 44, restored[1].Remaining(), "the queries at t0 left the minute; the Allow just made")
		}
	}
}

// A hunting query sent by the restored Transport waits for the slot that
// the query of the last process frees, to the nanosecond.
func TestTransportSnapshotHuntingWaits(t *testing.T) {
	tr, _, c := defenderTransport(t, t0, huntingRoute)
	spend(t, tr, c)
	data, err := tr.MarshalBinary()
	require.NoError(t, err)

	tr2, f2, c2 := defenderTransport(t, c.Now(), huntingRoute)
	require.NoError(t, tr2.UnmarshalBinary(data))
	req, err := http.NewRequest(http.MethodPost, "https://api.security.microsoft.com/api/advancedqueries/run", http.NoBody)
	require.NoError(t, err)
	ch := roundTrip(tr2, req)
	blockUntil(t, c2, 1, "the route is full")
	c2.Set(t0.Add(time.Minute - 1))
	blockUntil(t, c2, 1, "still full")
	requirePending(t, ch)
	c2.Advance(1)
	require.NoError(t, recv(t, ch).err)
	calls := f2.callsSeen()
	require.Len(t, calls, 1)
	assert.Equal(t, t0.Add(time.Minute), calls[0].at)
	send(t, tr2, http.MethodGet, "/api/alerts", 20)
	assert.Equal(t, 44, tr2.lim.Remaining(), "the minute holds the 35 restored calls after t0, and 21")
}

// A route registered but absent from the snapshot keeps its state.
func TestTransportSnapshotLeavesAbsentRoutes(t *testing.T) {
	tr, _, c := defenderTransport(t, t0, huntingRoute)
	send(t, tr, http.MethodPost, "/api/advancedqueries/run", 3)
	data, err := tr.MarshalBinary()
	require.NoError(t, err)

	tr2, _, _ := defenderTransport(t, c.Now(), huntingRoute, incidentsRoute)
	send(t, tr2, http.MethodGet, "/api/incidents", 7)
	require.NoError(t, tr2.UnmarshalBinary(data))
	assert.Equal(t, 43, routeByPattern(t, tr2, incidentsRoute).Remaining(), "7 calls, as before")
	assert.Equal(t, 42, routeByPattern(t, tr2, huntingRoute).Remaining(), "3 restored")
	assert.Equal(t, 90, tr2.lim.Remaining(), "7 made, 3 restored")
}

// Bad data is an error, and changes no limiter: neither the connection's
// nor a route's, even those that come before the bad part.
func TestTransportUnmarshalBinaryAllOrNothing(t *testing.T) {
	src, _, c := defenderTransport(t, t0, huntingRoute, incidentsRoute, "/other/")
	spend(t, src, c)
	send(t, src, http.MethodGet, "/other/x", 1)
	withOther, err := src.MarshalBinary()
	require.NoError(t, err)
	good, err := defenderSnapshot(t)
	require.NoError(t, err)
	future := append([]byte(nil), good...)
	future[len(transportSnapshotMagic)] = transportSnapshotVersion + 1
	badPart := appendBytes(append([]byte(transportSnapshotMagic), transportSnapshotVersion), []byte("LMTS\x01\xff"))
	badPart = append(badPart, 0)
	twice := appendBytes(append([]byte(transportSnapshotMagic), transportSnapshotVersion), mustMarshal(t, src.lim))
	twice = append(twice, 2)
	for range 2 {
		twice = appendBytes(appendBytes(twice, []byte(huntingRoute)), mustMarshal(t, routeByPattern(t, src, huntingRoute)))
	}

	badRoute := appendBytes(append([]byte(transportSnapshotMagic), transportSnapshotVersion), mustMarshal(t, src.lim))
	badRoute = appendBytes(appendBytes(append(badRoute, 1), []byte(huntingRoute)), []byte("LMTS\x02"))

	cases := map[string][]byte{
		"nil":                  nil,
		"garbage":              []byte("not a snapshot at all"),
		"a Limiter's snapshot": mustMarshal(t, src.lim),
		"future version":       future,
		"trailing bytes":       append(append([]byte(nil), good...), 0),
		"route not registered": withOther,
		"route twice":          twice,
		"bad part":             badPart,
		"bad route part":       badRoute,
	}
	for n := range len(good) {
		cases["truncated to "+strconv.Itoa(n)] = good[:n]
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			tr2, _, _ := defenderTransport(t, c.Now(), huntingRoute, incidentsRoute)
			send(t, tr2, http.MethodGet, "/api/incidents", 2)
			before, err := tr2.MarshalBinary()
			require.NoError(t, err)
			err = tr2.UnmarshalBinary(data)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "limiter: "), err.Error())
			after, err := tr2.MarshalBinary()
			require.NoError(t, err)
			assert.Equal(t, before, after, "nothing changed")
			assert.Nil(t, routeByPattern(t, tr2, huntingRoute), "no route limiter made")
		})
	}
	assert.Contains(t, errOf(t, withOther), `route "/other/", which is not registered`)
	assert.Contains(t, errOf(t, future), "version 2 not supported")
	assert.Contains(t, errOf(t, badPart), "the connection's limiter: snapshot truncated or corrupt")
}

func errOf(t *testing.T, data []byte) string {
	tr, _, _ := defenderTransport(t, t0, huntingRoute, incidentsRoute)
	err := tr.UnmarshalBinary(data)
	require.Error(t, err)
	return err.Error()
}

// defenderSnapshot returns the snapshot of the job of spend.
func defenderSnapshot(tb testing.TB) ([]byte, error) {
	tr, _, c := defenderTransport(tb, t0, huntingRoute, incidentsRoute)
	spend(tb, tr, c)
	return tr.MarshalBinary()
}

func mustMarshal(tb testing.TB, l *Limiter) []byte {
	tb.Helper()
	b, err := l.MarshalBinary()
	require.NoError(tb, err)
	return b
}

// A Transport without a *Limiter of its own has no snapshot: both methods
// say so, and neither panics.
func TestTransportSnapshotNeedsALimiter(t *testing.T) {
	g, err := NewGroup(10, time.Minute)
	require.NoError(t, err)
	other := NewTransport(nil, acquirerFunc(func(context.Context) (Permit, error) { return noPermit{}, nil }))
	for name, tc := range map[string]struct {
		tr   *Transport
		want string
	}{
		"group":       {NewGroupTransport(nil, g, nil), "NewGroupTransport has no snapshot"},
		"other":       {other, "limiter.acquirerFunc has no snapshot"},
		"nil limiter": {NewTransport(nil, (*Limiter)(nil)), "has no limiter"},
		"zero value":  {&Transport{}, "has no limiter"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tc.tr.MarshalBinary()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			good, err := defenderSnapshot(t)
			require.NoError(t, err)
			err = tc.tr.UnmarshalBinary(good)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

type acquirerFunc func(context.Context) (Permit, error)

func (f acquirerFunc) Acquire(ctx context.Context) (Permit, error) { return f(ctx) }

// FuzzTransportUnmarshalBinary: whatever the data, UnmarshalBinary never
// panics, and when it fails, no limiter of the Transport has changed.
func FuzzTransportUnmarshalBinary(f *testing.F) {
	good, err := defenderSnapshot(f)
	require.NoError(f, err)
	f.Add(good)
	src, _, c := defenderTransport(f, t0, huntingRoute, "/other/")
	spend(f, src, c)
	send(f, src, http.MethodGet, "/other/x", 1)
	withOther, err := src.MarshalBinary() // a route the target lacks, after good parts
	require.NoError(f, err)
	f.Add(withOther)
	f.Add(good[:len(good)/2])
	f.Add([]byte("LMTT\x01\x00\x00"))
	f.Add([]byte("LMTT\x01\x08LMTS\x01\x00\x00\x00\x01\x04/x/y\x08LMTS\x01\x00\x00\x00"))
	f.Add([]byte("LMTT\x01\xff\xff\xff\xff\x0f"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, _, c := defenderTransport(t, t0.Add(20*time.Second), huntingRoute, incidentsRoute)
		send(t, tr, http.MethodGet, "/api/incidents", 2)
		before, err := tr.MarshalBinary()
		require.NoError(t, err)
		if err := tr.UnmarshalBinary(data); err != nil {
			after, err := tr.MarshalBinary()
			require.NoError(t, err)
			require.Equal(t, before, after)
			return
		}
		// Restored: the rules still hold.
		n := 0
		for range 200 {
			if tr.lim.Allow() {
				n++
			}
		}
		require.LessOrEqual(t, n, 98)
		c.Advance(2 * time.Hour)
		_, err = tr.MarshalBinary()
		require.NoError(t, err)
	})
}
