"""Fast offscreen MuJoCo rendering shared by the MuJoCo-based adapters (Meta-World, Franka Kitchen).

    from vlaforge.envs import mjrender           # before mujoco is imported: sets the GL defaults
    r = mjrender.FastRenderer(model, 64, 64, camera="corner")
    img = r.render(data)                         # uint8 (64, 64, 3), C-contiguous
    mjrender.register_for_exit_cleanup(env)      # env.close() is called at interpreter exit

Why this exists:

* Cost. These envs usually render on a software rasterizer (llvmpipe behind EGL/OSMesa), where
  multisample anti-aliasing, shadow maps and reflections dominate the frame time (Meta-World:
  ~90 ms -> ~7 ms per 64x64 frame). ``fast_render_settings`` turns them off on the model
  (``offsamples=0``, no light casts shadows, no shadow map: ``shadowsize=0`` saves ~60 MB of the ~130 MB a
  Meta-World renderer took, and an offscreen buffer of the frame's size ~4 MB more, with identical frames; must
  happen before the GL context is made) and
  ``FastRenderer`` turns the shadow and reflection flags off in its scene.
* Headless defaults. On Linux, importing this module sets ``MUJOCO_GL=egl`` and
  ``LP_NUM_THREADS=0`` unless already set; both must be in place before ``mujoco`` is imported.
  Without llvmpipe's render threads a 64 px frame costs the same, and a process that has
  rendered can still fork workers that render (with them a forked child hangs in its first render).
* EGL teardown order. A GL context still alive when mujoco's own atexit handler calls
  ``eglTerminate`` makes EGL print errors at exit. ``_close_all`` closes every env registered
  with ``register_for_exit_cleanup``; it is registered with ``atexit`` only once the first
  ``FastRenderer`` exists, i.e. after mujoco registered its handler, so (atexit is LIFO) it runs first.
"""

from __future__ import annotations

import atexit
import os
import sys
import weakref

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless default; must precede the mujoco import
    os.environ.setdefault("LP_NUM_THREADS", "0")  # llvmpipe without render threads: see above

import numpy as np

_LIVE: weakref.WeakSet = weakref.WeakSet()
_ATEXIT: list = []


def _close_all() -> None:
    # Free GL contexts at exit, before mujoco's own atexit eglTerminate (see the module docstring).
    for env in list(_LIVE):
        try:
            env.close()
        except Exception:
            pass


def register_for_exit_cleanup(env) -> None:
    """Have ``env.close()`` called at interpreter exit (held weakly: a collected env is skipped)."""
    _LIVE.add(env)


def fast_render_settings(model, height: int, width: int) -> None:
    """Set a model up for cheap offscreen frames of (height, width); call before making a renderer."""
    model.vis.quality.offsamples = 0  # must be set before the GL context is made
    model.vis.quality.shadowsize = 0  # no shadow map: the context would allocate a 4096² one (~60 MB per renderer)
    model.light_castshadow[:] = 0
    # an offscreen buffer of the frame's own size (a context keeps the size it was made with, so a later, larger
    # renderer on the same model is unaffected; Meta-World's default 640x480 cost ~4 MB more per renderer)
    model.vis.global_.offwidth = width
    model.vis.global_.offheight = height


class FastRenderer:
    """A ``mujoco.Renderer`` with multisampling, shadows and reflections off.

    ``camera`` (a camera name, id or ``mujoco.MjvCamera``; -1: the free camera) is the default for ``render``.
    """

    def __init__(self, model, height: int, width: int, camera=-1):
        import mujoco

        fast_render_settings(model, height, width)
        self._renderer = mujoco.Renderer(model, height, width)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self.camera = camera
        if not _ATEXIT:  # after the first GL context exists, so it runs before mujoco's eglTerminate
            _ATEXIT.append(atexit.register(_close_all))

    def render(self, data, camera=None) -> np.ndarray:
        """The frame of ``data`` seen from ``camera`` (default: the constructor's), uint8 (H, W, 3)."""
        self._renderer.update_scene(data, camera=self.camera if camera is None else camera)
        return np.ascontiguousarray(self._renderer.render())

    def close(self) -> None:
        self._renderer.close()
