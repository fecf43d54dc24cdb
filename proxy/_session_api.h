/* The compiled Session's C interface (proxy/_session.c), for the native data plane (proxy/_dataplane.c):
 * a batch of messages handed to a session as pointers into the loop's records, so that no Python object
 * is made for a message that the session does not keep. The same messages through Session.from_client /
 * from_server give the same events; this is only the way in without tuples.
 *
 * Fetched at run time with PyCapsule_Import(SESSION_API_CAPSULE, 0); absent when _session was not built.
 */
#ifndef FASTERDATA_SESSION_API_H
#define FASTERDATA_SESSION_API_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define SESSION_API_CAPSULE "fasterdata.proxy._session._C_API"

/* One message, as wire.py's (type, body, length) tuple has it. */
typedef struct {
    unsigned char type;
    uint32_t length;           /* the third element: the body's length as the wire announced it */
    uint32_t kept;             /* bytes of the body here (the framer keeps a prefix of long bodies) */
    const unsigned char *body;
} SessionMessage;

typedef struct {
    PyTypeObject *session_type;  /* what the sessions fed here must be */
    /* Messages of one side (0: from the client, 1: from the server) read at now_us. Holds the GIL.
     * 0, or -1 with an exception set: what from_client / from_server would have raised. */
    int (*feed)(PyObject *session, int side, long long now_us, const SessionMessage *messages, size_t count);
} SessionAPI;

#endif
