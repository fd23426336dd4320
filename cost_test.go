package limiter

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Cost weighs every attempt, in the route's rules and the connection's.
func TestTransportCost(t *testing.T) {
	tr, _, l, _ := newTestTransport(t, t0, 100, time.Minute, replies(answer(200)))
	require.NoError(t, tr.Route("POST /api/$batch", 50, time.Minute))
	tr.Cost = func(req *http.Request) int {
		if n := req.Header.Get("X-Batch"); n != "" {
			return len(n)
		}
		return 0 // below 1: one
	}
	ctx := context.Background()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://graph.example.com/api/$batch", http.NoBody)
	require.NoError(t, err)
	req.Header.Set("X-Batch", strings.Repeat("x", 20))
	_, err = syncRoundTrip(t, tr, req)
	require.NoError(t, err)
	_, err = syncRoundTrip(t, tr, newGet(t, ctx, "https://graph.example.com/api/me"))
	require.NoError(t, err)
	assert.Equal(t, 79, l.Remaining(), "20 + 1")
	assert.Equal(t, 30, routeOf(t, tr, 0).Remaining(), "the batch's route: 20")
}

// On a group Transport a weight is charged to the key's limiter.
func TestGroupTransportCost(t *testing.T) {
	c := NewManualClock(t0)
	g, err := NewGroup(100, time.Minute, WithClock(c))
	require.NoError(t, err)
	tr := NewGroupTransport(&fakeRT{clock: c, reply: replies(answer(200))}, g, nil)
	tr.Cost = func(*http.Request) int { return 7 }
	_, err = syncRoundTrip(t, tr, newGet(t, context.Background(), "https://a.example.com/"))
	require.NoError(t, err)
	assert.Equal(t, 93, g.Get("a.example.com").Remaining())
	assert.Equal(t, 100, g.Get("b.example.com").Remaining())
}

// A weight no rule can ever admit is an error at once, not a wait.
func TestTransportImpossibleCost(t *testing.T) {
	tr, f, _, _ := newTestTransport(t, t0, 10, time.Minute, replies(answer(200)))
	tr.Cost = func(*http.Request) int { return 11 }
	_, err := syncRoundTrip(t, tr, newGet(t, context.Background(), "https://api.example.com/"))
	require.Error(t, err)
	assert.Empty(t, f.callsSeen())
}
