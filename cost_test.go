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
