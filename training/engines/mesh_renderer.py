"""Headless OpenGL rendering of triangle meshes seen by the project's OpenCV cameras.

Used for the posed-mesh-over-image snapshots (docs/method.md §5.7) and for synthetic renders: colour,
silhouette mask and metric z-depth of a mesh, without a display, on the CPU (Mesa llvmpipe
behind a standalone EGL context, driven by moderngl).

Cameras follow training/data/camera_utils.py: a label c [25] = OpenCV cam2world (row-major) +
intrinsics normalized by the image size. Images come out OpenCV style: row 0 at the top,
column 0 at the left, pixel (row i, column j) centred at (j + 0.5, i + 0.5) in pixel units, the
same pixel centres as the ray sampler.

Processes: GL contexts are per process and are created on the first render, never at import
or construction, so a renderer can be built in a parent process and used in its workers.
Mesa's llvmpipe runs a rasterizer thread pool that does not survive fork(): once a process
has created a GL context with that pool, a forked child that renders (even with a context of
its own) hangs forever. Before its first context this module therefore sets LP_NUM_THREADS=0
(render in the calling thread) unless the user has set it; on the 2-core project machines
parallelism comes from DataLoader workers anyway. If you set LP_NUM_THREADS to a positive
number, do not fork workers that render from a process that has rendered (a renderer then
raises in the child rather than hang): use the "spawn" or "forkserver" start method instead.
"""

import os
from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence

GL_PACKAGES = 'libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri'
MAX_LIGHTS = 4
DEFAULT_AMBIENT = 0.25
# Default lights, fixed to the camera so that every view is lit (orbits, views from behind):
# directions toward each light in the OpenCV camera frame (x right, y down, z forward), and
# their Lambert weights. A key light above-left of the camera and a weaker fill from the right;
# a surface facing the camera gets ambient + 0.55 + 0.22 ~= 1.
DEFAULT_CAMERA_LIGHTS = ((-0.4, -0.5, -1.0), (0.5, 0.2, -1.0))
DEFAULT_LIGHT_WEIGHTS = (0.65, 0.25)
DEFAULT_COLOR = (0.75, 0.75, 0.75)

# Per-process record, the only module state: the id of the process that created a GL context
# with llvmpipe rasterizer threads (LP_NUM_THREADS > 0), so that a forked child raises instead
# of hanging on its first render. Inherited by fork, which is the point.
_threaded_context_pid = None

_VERTEX_SHADER = """
#version 430
uniform mat4 world_to_clip;
in vec3 in_position;
in vec3 in_color;
out vec3 world_position;
out vec3 vertex_color;
void main() {
    world_position = in_position;
    vertex_color = in_color;
    gl_Position = world_to_clip * vec4(in_position, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 430
layout(std430, binding = 0) readonly buffer FaceColors { float face_colors[]; };
uniform int color_mode;  // 0: base_color, 1: interpolated vertex colours, 2: per-face colours
uniform vec3 base_color;
uniform bool lit;
uniform vec3 camera_position;
uniform int num_lights;
uniform vec3 light_dirs[MAX_LIGHTS];
uniform float light_weights[MAX_LIGHTS];
uniform float ambient;
in vec3 world_position;
in vec3 vertex_color;
out vec4 frag_color;
void main() {
    vec3 color = base_color;
    if (color_mode == 1) {
        color = vertex_color;
    } else if (color_mode == 2) {
        int i = 3 * gl_PrimitiveID;  // primitive i of an indexed draw is face i
        color = vec3(face_colors[i], face_colors[i + 1], face_colors[i + 2]);
    }
    if (lit) {
        // Screen-space derivatives of the position span the triangle's plane, so this is the
        // face normal, whatever the winding, without uploading normals. With window y up it
        // already faces the viewer; the check keeps it so where a driver flips y.
        vec3 to_camera = camera_position - world_position;
        vec3 normal = cross(dFdx(world_position), dFdy(world_position));
        float norm = length(normal);
        normal = norm > 0.0 ? normal / norm : normalize(to_camera);
        if (dot(normal, to_camera) < 0.0) normal = -normal;
        float shade = ambient;
        for (int k = 0; k < num_lights; ++k) {
            shade += light_weights[k] * max(dot(normal, light_dirs[k]), 0.0);
        }
        color *= shade;
    }
    frag_color = vec4(clamp(color, 0.0, 1.0), 1.0);
}
""".replace('MAX_LIGHTS', str(MAX_LIGHTS))


def _numpy(x: ArrayLike, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _image_size(resolution) -> tuple:
    if isinstance(resolution, (int, np.integer)):
        return int(resolution), int(resolution)
    height, width = (int(r) for r in resolution)
    return height, width


def opengl_projection(intrinsics: np.ndarray, height: int, width: int, near: float, far: float) -> np.ndarray:
    """OpenGL projection of a pinhole camera with normalized OpenCV intrinsics.

    intrinsics [3, 3] (normalized by image size: pixel K = diag(width, height, 1) @ K),
    -> [4, 4] mapping OpenGL eye coordinates (x right, y up, looking along -z) to clip space.
    The clip-space x/w, y/w land on the pixel u = fx x/z + s y/z + cx, v = fy y/z + cy of the
    OpenCV camera (x, y, z) = (x_gl, -y_gl, -z_gl), with u, v in [0, width] x [0, height] and
    v = 0 at the bottom of the GL framebuffer, i.e. the image comes out upside down and is
    flipped on readback. z in [near, far] maps to NDC depth [-1, 1].
    """
    fx, skew, cx = intrinsics[0] * width
    fy, cy = intrinsics[1, 1] * height, intrinsics[1, 2] * height
    projection = np.zeros((4, 4))
    projection[0] = (2 * fx / width, -2 * skew / width, 1 - 2 * cx / width, 0)
    projection[1] = (0, 2 * fy / height, 2 * cy / height - 1, 0)
    projection[2] = (0, 0, -(far + near) / (far - near), -2 * far * near / (far - near))
    projection[3] = (0, 0, -1, 0)
    return projection


def world_to_clip(
    cam2world: np.ndarray, intrinsics: np.ndarray, height: int, width: int, near: float, far: float
) -> np.ndarray:
    """World-to-clip matrix of an OpenCV camera for a (height x width) OpenGL viewport.

    cam2world [4, 4] (OpenCV axes), intrinsics [3, 3] normalized -> [4, 4] (float64)
    """
    opencv_to_opengl = np.diag([1.0, -1.0, -1.0, 1.0])
    world2cam = opencv_to_opengl @ np.linalg.inv(cam2world)
    return opengl_projection(intrinsics, height, width, near, far) @ world2cam


def _split_camera(c) -> tuple:
    """c [..., 25] or (cam2world [..., 4, 4], intrinsics [..., 3, 3]) -> float64 numpy pair."""
    if isinstance(c, (tuple, list)) and len(c) == 2:
        return _numpy(c[0], np.float64), _numpy(c[1], np.float64)
    c = _numpy(c, np.float64)
    if c.shape[-1] != 25:
        raise ValueError(f'camera label must have 25 values (16 cam2world + 9 intrinsics), got shape {c.shape}')
    return c[..., :16].reshape(*c.shape[:-1], 4, 4), c[..., 16:].reshape(*c.shape[:-1], 3, 3)


class MeshRenderer:
    """Rasterizes triangle meshes into colour, mask and z-depth images (headless OpenGL).

    Owns one standalone EGL context, its shader program and buffers, and one framebuffer per
    image size, all made on the first render in the process that renders (see the module
    docstring on fork). Not thread-safe; pickling keeps no GL state, so a renderer can be sent
    to spawned workers. Triangles are drawn without anti-aliasing (a pixel is covered when its
    centre is) and from both sides (no culling).
    """

    def __init__(self):
        self._ctx = None
        self._pid = None
        self._single_threaded = False
        self._stale_contexts = []

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    # ------------------------------------------------------------------------------------------
    # GL state

    def _context(self):
        if self._ctx is not None and self._pid != os.getpid():
            if not self._single_threaded:
                raise RuntimeError(
                    f'MeshRenderer: this renderer created its GL context in process {self._pid} with '
                    f'LP_NUM_THREADS={os.environ.get("LP_NUM_THREADS")}, and rendering in the forked process '
                    f'{os.getpid()} would hang. Leave LP_NUM_THREADS unset (or 0), or start workers with "spawn"'
                )
            # The inherited GL objects belong to the parent's driver state: keep them referenced
            # and never release them here, then start over with a context of this process.
            self._stale_contexts.append(
                {key: value for key, value in self.__dict__.items() if key != '_stale_contexts'}
            )
            self._ctx = None
        if self._ctx is None:
            self._create_context()
        return self._ctx

    def _create_context(self):
        global _threaded_context_pid
        if _threaded_context_pid not in (None, os.getpid()):
            raise RuntimeError(
                f'MeshRenderer: process {_threaded_context_pid} created a GL context with LP_NUM_THREADS='
                f'{os.environ.get("LP_NUM_THREADS")} and then forked; rendering in the child {os.getpid()} '
                f'would hang. Leave LP_NUM_THREADS unset (or 0), or start workers with "spawn"'
            )
        os.environ.setdefault('LP_NUM_THREADS', '0')
        self._single_threaded = os.environ['LP_NUM_THREADS'] == '0'
        try:
            import moderngl
        except ImportError as error:
            raise RuntimeError(f'MeshRenderer needs moderngl ({error}): pip install -r requirements.txt') from None
        try:
            ctx = moderngl.create_context(standalone=True, backend='egl', require=430)
        except Exception as error:
            raise RuntimeError(
                f'MeshRenderer: no headless OpenGL (EGL) context ({error}); install the Mesa EGL libraries '
                f'with `apt-get install {GL_PACKAGES}` (setup.sh does this)'
            ) from None
        self._moderngl = moderngl
        self._ctx = ctx
        self._pid = os.getpid()
        if not self._single_threaded:
            _threaded_context_pid = self._pid
        self._program = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        # Buffers grow (orphan) as meshes grow; the vertex array keeps pointing at them.
        self._positions = ctx.buffer(reserve=12)
        self._colors = ctx.buffer(reserve=12)
        self._indices = ctx.buffer(reserve=12)
        self._face_colors = ctx.buffer(reserve=12)
        self._vao = ctx.vertex_array(
            self._program,
            [(self._positions, '3f', 'in_position'), (self._colors, '3f', 'in_color')],
            index_buffer=self._indices,
            index_element_size=4,
        )
        self._framebuffers = {}

    def _framebuffer(self, height: int, width: int):
        key = (height, width)
        if key not in self._framebuffers:
            ctx = self._ctx
            self._framebuffers[key] = ctx.framebuffer(
                color_attachments=[ctx.renderbuffer((width, height), components=4, dtype='f4')],
                depth_attachment=ctx.depth_renderbuffer((width, height)),
            )
        return self._framebuffers[key]

    @staticmethod
    def _upload(buffer, array: np.ndarray):
        data = np.ascontiguousarray(array).tobytes()
        if len(data) > buffer.size:
            buffer.orphan(len(data))
        if data:
            buffer.write(data)

    @property
    def gl_renderer(self) -> str:
        """The OpenGL implementation rendering in this process, e.g. 'llvmpipe (LLVM 15.0.6, 256 bits)'."""
        return self._context().info['GL_RENDERER']

    # ------------------------------------------------------------------------------------------
    # Rendering

    def render(
        self,
        vertices: ArrayLike,
        faces: ArrayLike,
        c,
        resolution,
        vertex_colors: ArrayLike | None = None,
        face_colors: ArrayLike | None = None,
        color: Sequence[float] = DEFAULT_COLOR,
        lit: bool = True,
        light_dirs: ArrayLike | None = None,
        light_weights: ArrayLike | None = None,
        ambient: float = DEFAULT_AMBIENT,
        background: Sequence[float] = (1.0, 1.0, 1.0),
        near: float = 0.1,
        far: float = 10.0,
    ) -> dict:
        """Render one mesh from one camera.

        vertices [V, 3] (world, metres), faces [F, 3] (vertex indices),
        c: a camera label [25] or a pair (cam2world [4, 4] OpenCV, intrinsics [3, 3] normalized),
        resolution: int (square) or (height H, width W),
        vertex_colors [V, 3] in [0, 1], interpolated across faces; or face_colors [F, 3], one
        flat colour per face; neither: `color` everywhere.
        lit: Lambert shading with face normals (both sides lit alike); otherwise the colours
        are written as given.
        light_dirs [L, 3] (L <= 4): world directions toward directional lights, with Lambert
        weights light_weights [L] (default (1 - ambient) / L each); None: DEFAULT_CAMERA_LIGHTS,
        which move with the camera. The shade is ambient + sum of weight * max(0, n . l).
        background: RGB of empty pixels. Geometry outside camera z in [near, far] is clipped.
        Numpy arrays or torch tensors (on any device; they are detached and copied).
        -> dict(rgb float32 [H, W, 3] in [0, 1], mask bool [H, W],
                depth float32 [H, W]: OpenCV camera z in metres, inf where empty)
        """
        height, width = _image_size(resolution)
        vertices = _numpy(vertices, np.float32).reshape(-1, 3)
        faces = _numpy(faces, np.int64).reshape(-1, 3)
        cam2world, intrinsics = _split_camera(c)
        if cam2world.shape != (4, 4) or intrinsics.shape != (3, 3):
            raise ValueError(
                f'render takes one camera, got cam2world {cam2world.shape} and '
                f'intrinsics {intrinsics.shape}; use render_batch for several'
            )
        if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ValueError(f'faces index vertices {faces.min()}..{faces.max()}, the mesh has {len(vertices)}')
        if vertex_colors is not None and face_colors is not None:
            raise ValueError('give vertex_colors or face_colors, not both')

        ctx = self._context()
        program = self._program
        self._upload(self._positions, vertices)
        self._upload(self._indices, faces.astype(np.uint32))
        if vertex_colors is not None:
            vertex_colors = _numpy(vertex_colors, np.float32).reshape(-1, 3)
            if len(vertex_colors) != len(vertices):
                raise ValueError(f'vertex_colors has {len(vertex_colors)} rows, the mesh has {len(vertices)} vertices')
            self._upload(self._colors, vertex_colors)
            program['color_mode'].value = 1
        else:
            # The colour attribute is still fetched: keep its buffer as long as the positions.
            if self._colors.size < vertices.nbytes:
                self._colors.orphan(vertices.nbytes)
            program['color_mode'].value = 0
        if face_colors is not None:
            face_colors = _numpy(face_colors, np.float32).reshape(-1, 3)
            if len(face_colors) != len(faces):
                raise ValueError(f'face_colors has {len(face_colors)} rows, the mesh has {len(faces)} faces')
            self._upload(self._face_colors, face_colors)
            program['color_mode'].value = 2
        program['base_color'].value = tuple(float(x) for x in color)

        program['world_to_clip'].write(
            world_to_clip(cam2world, intrinsics, height, width, near, far).T.astype(np.float32).tobytes()
        )
        program['lit'].value = bool(lit)
        if lit:
            if light_dirs is None:
                directions = np.asarray(DEFAULT_CAMERA_LIGHTS) @ cam2world[:3, :3].T
                weights = np.asarray(DEFAULT_LIGHT_WEIGHTS if light_weights is None else light_weights)
            else:
                directions = _numpy(light_dirs, np.float64).reshape(-1, 3)
                weights = (
                    np.full(len(directions), (1 - ambient) / max(len(directions), 1))
                    if light_weights is None
                    else _numpy(light_weights, np.float64).reshape(-1)
                )
            if len(directions) > MAX_LIGHTS or len(weights) != len(directions):
                raise ValueError(
                    f'{len(directions)} light directions and {len(weights)} weights; '
                    f'at most {MAX_LIGHTS} lights, one weight each'
                )
            directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
            padded_dirs = np.zeros((MAX_LIGHTS, 3), np.float32)
            padded_weights = np.zeros(MAX_LIGHTS, np.float32)
            padded_dirs[: len(directions)] = directions
            padded_weights[: len(weights)] = weights
            program['num_lights'].value = len(directions)
            program['light_dirs'].write(padded_dirs.tobytes())
            program['light_weights'].write(padded_weights.tobytes())
            program['ambient'].value = float(ambient)
            program['camera_position'].value = tuple(float(x) for x in cam2world[:3, 3])

        framebuffer = self._framebuffer(height, width)
        framebuffer.use()
        framebuffer.clear(*(float(x) for x in background), 0.0, depth=1.0)
        ctx.enable(self._moderngl.DEPTH_TEST)
        self._face_colors.bind_to_storage_buffer(0)
        if len(faces):
            self._vao.render(self._moderngl.TRIANGLES, vertices=3 * len(faces))

        # GL rows start at the bottom of the image, OpenCV rows at the top.
        rgba = np.frombuffer(framebuffer.read(components=4, dtype='f4'), np.float32)
        rgba = rgba.reshape(height, width, 4)[::-1]
        depth_buffer = np.frombuffer(framebuffer.read(components=1, attachment=-1, dtype='f4'), np.float32)
        depth_buffer = depth_buffer.reshape(height, width)[::-1]
        mask = rgba[..., 3] > 0.5
        # Invert the projection's depth mapping (window depth 0..1 -> NDC -1..1 -> eye z).
        ndc = 2.0 * depth_buffer.astype(np.float64) - 1.0
        depth = 2.0 * far * near / (far + near - ndc * (far - near))
        return dict(
            rgb=np.ascontiguousarray(rgba[..., :3]),
            mask=np.ascontiguousarray(mask),
            depth=np.where(mask, depth, np.inf).astype(np.float32),
        )

    def render_batch(
        self,
        vertices: ArrayLike,
        faces: ArrayLike,
        c,
        resolution,
        vertex_colors: ArrayLike | None = None,
        face_colors: ArrayLike | None = None,
        **kwargs,
    ) -> dict:
        """Render a batch of meshes sharing one topology, one camera each.

        vertices [B, V, 3] or [1, V, 3] (one mesh for every camera), faces [F, 3],
        c: labels [B, 25] or a pair (cam2world [B, 4, 4], intrinsics [B, 3, 3]); B = 1 is
        broadcast over the meshes. vertex_colors [V, 3] or [B, V, 3], face_colors [F, 3] or
        [B, F, 3]; other arguments as in `render`.
        -> dict(rgb [B, H, W, 3], mask [B, H, W], depth [B, H, W]) as in `render`
        """
        vertices = _numpy(vertices, np.float32)
        faces = _numpy(faces, np.int64)
        cam2world, intrinsics = _split_camera(c)
        cam2world, intrinsics = cam2world.reshape(-1, 4, 4), intrinsics.reshape(-1, 3, 3)
        if vertices.ndim != 3 or vertices.shape[-1] != 3:
            raise ValueError(f'render_batch takes vertices [B, V, 3], got {vertices.shape}')
        batch = max(len(vertices), len(cam2world))
        if len(vertices) not in (1, batch) or len(cam2world) not in (1, batch) or len(intrinsics) != len(cam2world):
            raise ValueError(
                f'batch sizes differ: {len(vertices)} meshes, {len(cam2world)} cam2world, {len(intrinsics)} intrinsics'
            )

        def item(array, index, per_item_ndim):
            if array is None:
                return None
            array = _numpy(array, np.float32)
            return array[index if len(array) > 1 else 0] if array.ndim == per_item_ndim + 1 else array

        results = []
        for index in range(batch):
            results.append(
                self.render(
                    vertices[index if len(vertices) > 1 else 0],
                    faces,
                    (cam2world[index if len(cam2world) > 1 else 0], intrinsics[index if len(intrinsics) > 1 else 0]),
                    resolution,
                    vertex_colors=item(vertex_colors, index, 2),
                    face_colors=item(face_colors, index, 2),
                    **kwargs,
                )
            )
        return {key: np.stack([result[key] for result in results]) for key in ('rgb', 'mask', 'depth')}

    def overlay(
        self,
        image: ArrayLike,
        vertices: ArrayLike,
        faces: ArrayLike,
        c,
        alpha: float = 0.6,
        color: Sequence[float] = (0.4, 0.5, 0.9),
    ) -> np.ndarray:
        """Blend the shaded mesh over an image (the posed-mesh snapshot, docs/method.md §5.7).

        image uint8 [H, W, 3], vertices [V, 3], faces [F, 3], c as in `render` -> uint8
        [H, W, 3]: inside the mesh's mask (1 - alpha) * image + alpha * shaded mesh, outside it
        the image unchanged. Numpy arrays or torch tensors.
        """
        image = _numpy(image, np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'overlay takes an image [H, W, 3], got {image.shape}')
        rendered = self.render(vertices, faces, c, image.shape[:2], color=color)
        weight = alpha * rendered['mask'][..., None]
        blended = (1 - weight) * image + weight * (255 * rendered['rgb'])
        return np.where(rendered['mask'][..., None], np.clip(np.rint(blended), 0, 255), image).astype(np.uint8)
