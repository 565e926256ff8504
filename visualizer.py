"""Interactive viewer in the browser: a web page served from Python (viser) that renders a generator live.

Run it on the machine with the snapshot, forward its port over SSH, and open the printed URL:
    python visualizer.py --network runs/00000-cpu-small-...
    ssh -N -L 8080:localhost:8080 user@server
The render fills the page's 3D viewport, whose camera drives it: drag to orbit, scroll to move in or out, right-drag
to pan. The rendering lives in training/engines/viewer.py; this file is the command line and the page's controls.
"""

import collections
import errno
import getpass
import math
import os
import signal
import socket
import threading
import time

import click
import numpy as np
import torch
import viser

from training.cli import (
    SEED_RANGE,
    Command,
    device_option,
    load_generator,
    load_snapshot,
    make_outdir,
    trust_pickle_option,
)
from training.data.camera_utils import RADIUS
from training.data.images import save_png
from training.engines.shapes import DEFAULT_LEVEL, extract_shape, pose_vertices, save_shape
from training.engines.texture import save_textured_shape
from training.engines.video import IMAGE_MODES, write_video
from training.engines.viewer import (
    BLEND_SPACES,
    DEFAULT_FOV,
    NAMED_YAWS,
    RENDER_MODES,
    RenderWorker,
    Viewer,
    ViewState,
    camera,
    fit_to_viewport,
    orbit_angles,
    orbit_viewport,
    viewport_camera_label,
)
from training.networks.stylegan2 import NOISE_MODES

POSE_AXES = ('neck x', 'neck y', 'neck z', 'head x', 'head y', 'head z')
MODE_LABELS = dict(zip(RENDER_MODES, ('super-resolved image', 'raw neural render', 'depth', 'alpha mask')))
YAW_RANGE, PITCH_RANGE, RADIUS_RANGE = (-180.0, 180.0), (-60.0, 60.0), (1.5, 5.0)  # of the camera sliders
SAME_CAMERA = 1e-4  # largest difference of cam2world entries between a reported camera and the rendered one
ECHO_SECONDS = 1.0  # how long after the page set a browser's camera that browser's reports are not taken as moves


def require_free_port(host: str, port: int) -> None:
    """A click error when `port` cannot be bound on `host` (0 = any free port is always fine)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise click.BadParameter(f'{host!r}: {err.strerror}', param_hint='--host') from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            try:
                probe.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise click.ClickException(
                        f'port {port} on {host} is in use; choose another --port (--port 0 takes any free one)'
                    ) from None
                raise click.ClickException(f'cannot listen on {host}:{port}: {err.strerror}') from None


def load_network(
    network: str | None, cfg: str | None, init_seed: int, device: torch.device, trust_pickle: bool
) -> tuple:
    """--network or --cfg -> (G in eval mode, a line naming what was loaded), as click errors."""
    if network:
        path, G, _, _ = load_snapshot(network, device, trust_pickle)
        if G is None:
            raise click.ClickException(f'{network}: the checkpoint holds no generator (G_ema or G)')
        return G, path
    return load_generator(None, cfg, init_seed, device), f'preset {cfg}, freshly initialized (weight seed {init_seed})'


def free_stem(outdir: str, name: str, extension: str) -> str:
    """outdir/name, or outdir/name-2, -3, ... so that name.extension does not exist yet."""
    stem, count = os.path.join(outdir, name), 1
    while os.path.exists(f'{stem}.{extension}'):
        count += 1
        stem = os.path.join(outdir, f'{name}-{count}')
    return stem


def clip(value: float, bounds: tuple) -> float:
    return min(max(value, bounds[0]), bounds[1])


class ViewerPage:
    """The controls of the page, the viewport the render fills, and the capture buttons.

    Every control that changes the picture asks the render worker for the newest state: a slider or the
    viewport's camera as an interactive request (draft while it moves, full render once still), a button or a
    choice at once in full. The camera is one for the whole page: the viewport's camera (dragged in any browser)
    and the camera sliders move each other, and every connected viewport shows the same camera. A browser
    reports back every camera the page sets in it, and until it has received the newest one it may still
    report older ones (a slider's earlier positions, its own camera before the page's first one). So for
    `ECHO_SECONDS` after the page set a browser's camera, that browser's reports are not taken for moves; then
    the page looks once more at the camera the browser reported last.
    """

    def __init__(
        self,
        server: viser.ViserServer,
        viewer: Viewer,
        network: str,
        cfg: str | None,
        init_seed: int,
        device: torch.device,
        trust_pickle: bool,
        outdir: str,
        loaded: str,
    ):
        self.server, self.viewer = server, viewer
        self.cfg, self.init_seed, self.device, self.trust_pickle = cfg, init_seed, device, trust_pickle
        self._quiet = False  # set while several controls change at once (reset, reload)
        gui = server.gui
        self._camera_lock = threading.RLock()
        self._viewport = None  # (camera label [25], position, look-at) of a dragged viewport; None = the sliders
        self._camera_set_at = {}  # client -> time.monotonic() when the page last set its viewport's camera
        self._viewport_aspect = 1.0  # width / height of the latest viewport
        self._last_picture = None  # display picture of the latest render, to refit when the viewport resizes
        self.recent = collections.deque(maxlen=16)  # (state, draft, images) of the latest renders, newest last
        server.scene.set_up_direction('+y')  # the world of camera_utils: metres, y up, the subject faces +z
        position, look_at = orbit_viewport(0.0, 0.0, RADIUS)
        server.initial_camera.position, server.initial_camera.look_at = tuple(position), tuple(look_at)
        server.initial_camera.up = (0.0, 1.0, 0.0)
        server.initial_camera.fov = math.radians(DEFAULT_FOV)

        self.frame_time = gui.add_markdown('waiting for the first render')
        self.pose_readout = gui.add_markdown('')

        with gui.add_folder('Network'):
            self.network = gui.add_text('snapshot', network or '', hint='.pkl, .pt, run directory or training outdir')
            self.reload = gui.add_button('reload', icon=viser.Icon.REFRESH)
            self.loaded = gui.add_markdown(f'loaded: `{loaded}`')
        with gui.add_folder('Latent'):
            self.seed = gui.add_number('seed', 0, min=0, max=2**32 - 1, step=1)
            self.seed2 = gui.add_number('second seed', 1, min=0, max=2**32 - 1, step=1)
            self.blend = gui.add_slider('blend', 0.0, 1.0, 0.01, 0.0, hint='0 = seed, 1 = second seed')
            self.blend_space = gui.add_dropdown('blend in', BLEND_SPACES, initial_value='w')
            self.psi = gui.add_slider('truncation psi', 0.0, 1.5, 0.01, 1.0)
            self.cutoff = gui.add_number('truncation cutoff', 0, min=0, max=1024, step=1, hint='0 = all ws')
            self.noise = gui.add_dropdown('noise', NOISE_MODES, initial_value='const')
        with gui.add_folder('Camera'):
            gui.add_markdown('In the viewport: drag to orbit, scroll to move in or out, right-drag to pan.')
            self.yaw = gui.add_slider('yaw (°)', *YAW_RANGE, 1.0, 0.0, hint='0 front, -90 side, ±180 back')
            self.pitch = gui.add_slider('pitch (°)', *PITCH_RANGE, 1.0, 0.0, hint='positive: from below')
            self.radius = gui.add_slider('radius (m)', *RADIUS_RANGE, 0.05, RADIUS)
            self.fov = gui.add_slider('field of view (°)', 2.0, 30.0, 0.01, round(DEFAULT_FOV, 2))
            self.views = gui.add_button_group('view', ('front', 'side', 'back', 'reset'))
        with gui.add_folder('Body pose (rad)'):
            self.deform = gui.add_checkbox('render posed', True, hint='off: the canonical head, no deformation')
            self.pose_branch = gui.add_checkbox(
                "use G's pose branch", False, hint='the pose G picks for this latent and camera'
            )
            self.pose = [gui.add_slider(axis, -1.2, 1.2, 0.01, 0.0) for axis in POSE_AXES]
            self.zero_pose = gui.add_button('zero pose')
        with gui.add_folder('Conditioning', expand_by_default=False):
            self.cond_on_camera = gui.add_checkbox('condition on the rendering camera', False)
            self.cond_yaw = gui.add_slider('conditioning yaw (°)', -180.0, 180.0, 1.0, 0.0)
            self.cond_pitch = gui.add_slider('conditioning pitch (°)', -60.0, 60.0, 1.0, 0.0)
            self.cond_on_pose = gui.add_checkbox('condition on the rendering pose', False)
            self.cond_pose = [gui.add_slider(f'conditioning {axis}', -1.2, 1.2, 0.01, 0.0) for axis in POSE_AXES]
        with gui.add_folder('Render'):
            self.mode = gui.add_dropdown('show', tuple(MODE_LABELS.values()), initial_value=MODE_LABELS['image'])
            resolution = viewer.default_resolution
            self.resolution = gui.add_slider('rays per side', 8, max(256, 2 * resolution), 8, resolution)
            self.sample_mult = gui.add_slider('samples per ray ×', 0.25, 4.0, 0.25, 1.0)
            self.draft_resolution = gui.add_slider(
                'while dragging: rays per side', 8, max(256, 2 * resolution), 8, min(32, resolution)
            )
            self.draft_sample_mult = gui.add_slider('while dragging: samples ×', 0.125, 1.0, 0.125, 0.5)
        with gui.add_folder('Capture'):
            self.outdir = gui.add_text('folder', outdir)
            self.save_image = gui.add_button('save image (.png)', icon=viser.Icon.PHOTO)
            self.mesh_posed = gui.add_checkbox('mesh posed', False, hint='carry the mesh into the rendering pose')
            self.mesh_resolution = gui.add_number('mesh grid', 128, min=16, max=512, step=16)
            self.mesh_level = gui.add_number('mesh level', DEFAULT_LEVEL, step=0.5)
            self.mesh_texture = gui.add_number(
                'mesh texture',
                0,
                min=0,
                max=8192,
                step=256,
                hint='texels per side of a UV texture baked from the renders (as extract_shapes.py --texture); '
                '0: vertex colours',
            )
            self.save_mesh = gui.add_button('save mesh (.glb)', icon=viser.Icon.CUBE)
            self.video_frames = gui.add_number('video frames', 60, min=2, max=1200, step=1)
            self.save_video = gui.add_button('save 360° video (.mp4)', icon=viser.Icon.MOVIE)
            self.status = gui.add_markdown('')

        sliders = [
            self.blend,
            self.psi,
            *self.pose,
            self.cond_yaw,
            self.cond_pitch,
            *self.cond_pose,
            self.resolution,
            self.sample_mult,
        ]
        for handle in sliders:
            handle.on_update(lambda _: self.request(interactive=True))
        for handle in (self.yaw, self.pitch, self.radius, self.fov):
            handle.on_update(lambda _: self.orbit_moved())
        choices = [
            self.seed,
            self.seed2,
            self.blend_space,
            self.cutoff,
            self.noise,
            self.deform,
            self.pose_branch,
            self.cond_on_camera,
            self.cond_on_pose,
            self.mode,
            self.draft_resolution,
            self.draft_sample_mult,
        ]
        for handle in choices:
            handle.on_update(lambda _: self.request(interactive=False))
        self.views.on_click(lambda event: self.snap(event.target.value))
        self.zero_pose.on_click(lambda _: self.set_quietly([(slider, 0.0) for slider in self.pose]))
        self.reload.on_click(lambda _: self.reload_network())
        self.save_image.on_click(lambda _: self.capture(self.write_image))
        self.save_mesh.on_click(lambda _: self.capture(self.write_mesh))
        self.save_video.on_click(lambda _: self.capture(self.write_video))

        self.worker = RenderWorker(viewer.render, self.show, on_error=self.show_error)
        server.on_client_connect(self.connect)
        server.on_client_disconnect(self.disconnect)

    def state(self) -> ViewState:
        """The ViewState of the controls as they are now."""
        mode = next(key for key, label in MODE_LABELS.items() if label == self.mode.value)
        return ViewState(
            seed=int(self.seed.value),
            seed2=int(self.seed2.value),
            blend=float(self.blend.value),
            blend_space=self.blend_space.value,
            truncation_psi=float(self.psi.value),
            truncation_cutoff=int(self.cutoff.value) or None,
            noise_mode=self.noise.value,
            yaw=float(self.yaw.value),
            pitch=float(self.pitch.value),
            radius=float(self.radius.value),
            # The slider shows the default field of view to 2 decimals; at that mark it means the tools' camera.
            fov=self.fov_degrees(),
            viewport=self._viewport[0] if self._viewport is not None else None,
            condition_on_render_camera=self.cond_on_camera.value,
            cond_yaw=float(self.cond_yaw.value),
            cond_pitch=float(self.cond_pitch.value),
            deform=self.deform.value,
            pose=tuple(float(slider.value) for slider in self.pose),
            use_pose_branch=self.pose_branch.value,
            condition_on_render_pose=self.cond_on_pose.value,
            cond_pose=tuple(float(slider.value) for slider in self.cond_pose),
            mode=mode,
            neural_rendering_resolution=int(self.resolution.value),
            sample_mult=float(self.sample_mult.value),
            draft_resolution=int(self.draft_resolution.value),
            draft_sample_mult=float(self.draft_sample_mult.value),
        )

    def fov_degrees(self) -> float:
        # The slider shows the default field of view to 2 decimals; at that mark it means the tools' camera.
        return DEFAULT_FOV if self.fov.value == round(DEFAULT_FOV, 2) else float(self.fov.value)

    def request(self, interactive: bool) -> None:
        if not self._quiet:
            self.worker.request(self.state(), interactive)

    def set_quietly(self, assignments: list, request: bool = True) -> None:
        """Set several controls [(handle, value)], then (with `request`) ask for one full render."""
        self._quiet = True
        try:
            for handle, value in assignments:
                handle.value = value
        finally:
            self._quiet = False
        if request:
            self.request(interactive=False)

    def snap(self, view: str) -> None:
        """The named views of the tools (front, side, back) or the default camera (reset); the viewports follow."""
        if view == 'reset':
            assignments = [(self.yaw, 0.0), (self.pitch, 0.0), (self.radius, RADIUS), (self.fov, round(DEFAULT_FOV, 2))]
        else:
            assignments = [(self.yaw, NAMED_YAWS[view]), (self.pitch, 0.0)]
        self.set_quietly(assignments, request=False)
        self.follow_sliders()
        self.request(interactive=False)

    def orbit_moved(self) -> None:
        """A camera slider moved: the viewports follow, the render drafts while it moves."""
        if not self._quiet:
            self.follow_sliders()
            self.request(interactive=True)

    def follow_sliders(self) -> None:
        """Render from the orbit camera of the sliders again and move every viewport there."""
        with self._camera_lock:
            self._viewport = None
        self.move_viewports(self.server.get_clients().values())

    def rendering_cam2world(self) -> np.ndarray:
        """cam2world [4, 4] of the camera the page renders from: the viewport's, or the sliders' orbit camera."""
        with self._camera_lock:
            if self._viewport is not None:
                return np.array(self._viewport[0][:16]).reshape(4, 4)
        label = camera(float(self.yaw.value), float(self.pitch.value), float(self.radius.value))
        return label[0, :16].double().numpy().reshape(4, 4)

    def move_viewports(self, clients, moved_by=None) -> None:
        """Put the viewport camera of each client (but `moved_by`, whose camera it is) at the rendering camera."""
        with self._camera_lock:
            if self._viewport is None:
                position, look_at = orbit_viewport(
                    float(self.yaw.value), float(self.pitch.value), float(self.radius.value)
                )
            else:
                _, position, look_at = self._viewport
        fov = math.radians(self.fov_degrees())
        loop = self.server.get_event_loop()
        for client in clients:
            if client is moved_by:
                continue
            with self._camera_lock:
                self._camera_set_at[client] = time.monotonic()
            with client.atomic():
                client.camera.fov = fov
                client.camera.up_direction = (0.0, 1.0, 0.0)
                client.camera.position = position
                client.camera.look_at = look_at
            loop.call_soon_threadsafe(loop.call_later, ECHO_SECONDS, self.viewport_moved, client.camera)

    async def connect(self, client: viser.ClientHandle) -> None:
        """A browser opened the page: its viewport takes the page's camera and drives it from now on."""
        self.move_viewports([client])
        client.camera.on_update(self.viewport_reported)

    async def disconnect(self, client: viser.ClientHandle) -> None:
        with self._camera_lock:
            self._camera_set_at.pop(client, None)

    async def viewport_reported(self, viewport: viser.CameraHandle) -> None:
        """viser runs async callbacks on its event loop, one after another in the order of the browser's reports
        (plain ones on a thread pool, where a later report could overtake an earlier one and leave the page
        rendering a camera the browser has left)."""
        self.viewport_moved(viewport)

    def viewport_moved(self, viewport: viser.CameraHandle) -> None:
        """A browser reported its viewport's camera (a drag or zoom, a resize, or a camera the page set): a camera
        other than the rendered one is rendered (draft first) and the sliders and other viewports follow it."""
        position, look_at = np.array(viewport.position), np.array(viewport.look_at)
        label = viewport_camera_label(position, viewport.wxyz, viewport.fov)[0]
        cam2world = label[:16].double().numpy().reshape(4, 4)
        with self._camera_lock:
            aspect = viewport.image_width / viewport.image_height if viewport.image_height else self._viewport_aspect
            resized, self._viewport_aspect = aspect != self._viewport_aspect, aspect
            set_at = self._camera_set_at.get(viewport.client)
            settling = set_at is not None and time.monotonic() - set_at < ECHO_SECONDS
            moved = not settling and np.abs(cam2world - self.rendering_cam2world()).max() > SAME_CAMERA
            if moved:
                self._viewport = (tuple(label.tolist()), position, look_at)
                yaw, pitch, radius = orbit_angles(position)
                self.set_quietly(
                    [
                        (self.yaw, round(clip(yaw, YAW_RANGE), 1)),
                        (self.pitch, round(clip(pitch, PITCH_RANGE), 1)),
                        (self.radius, round(clip(radius, RADIUS_RANGE), 2)),
                    ],
                    request=False,
                )
        if moved:
            self.move_viewports(self.server.get_clients().values(), moved_by=viewport.client)
            self.request(interactive=True)
        elif resized and self._last_picture is not None:
            self.show_picture(self._last_picture)

    def show_picture(self, picture: np.ndarray) -> None:
        """uint8 [S, S, 3] -> the background of the viewports, filling them."""
        with self._camera_lock:
            self._last_picture = picture
            aspect = self._viewport_aspect
        self.server.scene.set_background_image(fit_to_viewport(picture, aspect), format='png')

    def show(self, images: dict, state: ViewState, draft: bool, seconds: float) -> None:
        """Publish a render: the picture in the viewports, its frame time and the rendering pose."""
        height, width = images['display'].shape[:2]
        self.show_picture(images['display'])
        self.recent.append((state, draft, images))
        cached = 'tri-grid cached' if self.viewer.last_planes_cached else 'tri-grid computed'
        kind = 'draft (dragging)' if draft else 'full'
        self.frame_time.content = f'**{kind}**: {1000 * seconds:.0f} ms, {width}×{height} px, {cached}'
        pose = images['pose']
        self.pose_readout.content = (
            'rendering pose: canonical (no deformation)'
            if pose is None
            else 'rendering pose (rad): ' + ', '.join(f'{v:+.2f}' for v in pose[0].tolist())
        )

    def show_error(self, err: Exception) -> None:
        self.frame_time.content = f'**render failed**: {err}'

    def reload_network(self) -> None:
        """Load the snapshot named in the text field (empty: the --cfg preset afresh) without restarting."""
        self.reload.disabled = True
        self.loaded.content = 'loading ...'
        try:
            network = self.network.value.strip() or None
            if network is None and self.cfg is None:
                raise click.ClickException('name a snapshot to load')
            G, loaded = load_network(
                network, None if network else self.cfg, self.init_seed, self.device, self.trust_pickle
            )
        except click.ClickException as err:
            self.loaded.content = f'**not loaded**: {err.format_message()}'
            return
        finally:
            self.reload.disabled = False
        self.viewer.set_generator(G)
        resolution = self.viewer.default_resolution
        self.resolution.max = self.draft_resolution.max = max(256, 2 * resolution)
        self.loaded.content = f'loaded: `{loaded}`'
        self.set_quietly(
            [(self.resolution, resolution), (self.draft_resolution, min(32, resolution)), (self.cutoff, 0)]
        )

    def capture(self, write) -> None:
        """Run one capture (write(state, outdir) -> message) and report it below the buttons."""
        buttons = (self.save_image, self.save_mesh, self.save_video)
        for button in buttons:
            button.disabled = True
        self.status.content = 'writing ...'
        try:
            outdir = make_outdir(self.outdir.value.strip() or '.', option='folder')
            self.status.content = write(self.state(), outdir)
        except (click.ClickException, OSError, ValueError) as err:
            self.status.content = (
                f'**failed**: {err.format_message() if isinstance(err, click.ClickException) else err}'
            )
        finally:
            for button in buttons:
                button.disabled = False

    def write_image(self, state: ViewState, outdir: str) -> str:
        """The current picture in full quality -> outdir/seedNNNN-<mode>.png."""
        picture = self.viewer.render(state)['display']
        path = free_stem(outdir, f'seed{state.seed:04d}-{state.mode}', 'png') + '.png'
        save_png(path, picture)
        return f'wrote `{path}`'

    def write_mesh(self, state: ViewState, outdir: str) -> str:
        """The identity's mesh (canonical, or posed by the rendering pose; with vertex colours, or UV-textured
        when 'mesh texture' is above 0) -> outdir/seedNNNN.glb and .mrc, as extract_shapes.py writes them; the
        mesh also appears in the viewport, over the render."""
        with self.viewer.lock:
            ws, pose = self.viewer.latent_and_pose(state)
            shape = extract_shape(self.viewer.G, ws, int(self.mesh_resolution.value), float(self.mesh_level.value))
            if self.mesh_posed.value and pose is not None and shape['vertices'] is not None:
                shape['vertices'] = pose_vertices(self.viewer.G.deformer, shape['vertices'], pose)
            stem = free_stem(outdir, f'seed{state.seed:04d}', 'glb')
            texels = int(self.mesh_texture.value)
            if texels > 0:
                posed_by = pose if self.mesh_posed.value else None
                summary = save_textured_shape(self.viewer.G, ws, shape, stem, 'glb', texels, posed_by)
            else:
                summary = save_shape(shape, stem, 'glb')
        if shape['vertices'] is not None:
            with open(f'{stem}.glb', 'rb') as f:
                self.server.scene.add_glb('/mesh', f.read())
        return f'{summary} → `{stem}.glb` (shown in the viewport)'

    def write_video(self, state: ViewState, outdir: str) -> str:
        """A 360° orbit of the current latent and pose -> outdir/seedNNNN-orbit.mp4 (as gen_videos.py)."""
        frames = int(self.video_frames.value)
        image_mode = state.mode if state.mode in IMAGE_MODES else 'image'
        path = free_stem(outdir, f'seed{state.seed:04d}-orbit-{image_mode}', 'mp4') + '.mp4'
        with self.viewer.lock:
            ws, pose = self.viewer.latent_and_pose(state)
            write_video(
                self.viewer.G,
                [ws.expand(frames, -1, -1)],
                (1, 1),
                path,
                'orbit',
                image_mode,
                fps=30,
                sample_mult=max(1, round(state.sample_mult)),
                pose_amplitude=0.0,
                base_pose=pose,
            )
        return f'wrote {frames} frames to `{path}`'


def start_server(host: str, port: int) -> viser.ViserServer:
    """A viser server on exactly host:port (viser itself would move on to the next free port)."""
    require_free_port(host, port)
    server = viser.ViserServer(host=host, port=port, label='3DPortraitGAN viewer', verbose=False)
    if port != 0 and server.get_port() != port:
        server.stop()
        raise click.ClickException(f'port {port} on {host} was taken meanwhile; choose another --port')
    return server


@click.command(cls=Command)
@click.option(
    '--network', help='Checkpoint (network pickle or weights file, path or URL), a run directory or a training outdir'
)
@click.option('--cfg', help='Preset to initialize freshly instead of loading a checkpoint (e.g. cpu-small)')
@click.option('--init-seed', type=SEED_RANGE, default=0, show_default=True, help='Weight seed with --cfg')
@click.option('--host', default='127.0.0.1', show_default=True, help='Address to listen on (0.0.0.0: every interface)')
@click.option(
    '--port', type=click.IntRange(0, 65535), default=8080, show_default=True, help='Port of the page; 0 = any free one'
)
@click.option(
    '--outdir',
    type=click.Path(file_okay=False),
    default='out/visualizer',
    show_default=True,
    help='Initial folder of the capture buttons',
)
@device_option
@trust_pickle_option
def main(network, cfg, init_seed, host, port, outdir, device, trust_pickle):
    """Serve an interactive viewer of a generator as a web page: latent, camera, body pose and render
    settings as controls, the picture re-rendered as they move, and buttons that save the image, the mesh
    (.glb) and a 360-degree video with the same code as gen_samples.py, extract_shapes.py and gen_videos.py.

    It needs no display: open the printed URL in a browser, on another machine through an SSH port forward.
    Ctrl-C stops it.
    """
    if (network is None) == (cfg is None):
        raise click.UsageError('give exactly one of --network (a checkpoint) or --cfg (a preset, freshly initialized)')
    require_free_port(host, port)
    G, loaded = load_network(network, cfg, init_seed, device, trust_pickle)
    viewer = Viewer(G)
    server = start_server(host, port)
    page = ViewerPage(server, viewer, network, cfg, init_seed, device, trust_pickle, outdir, loaded)
    page.request(interactive=False)

    bound = server.get_port()
    shown_host = 'localhost' if host in ('127.0.0.1', '::1', 'localhost') else host
    print(f'Viewer of {loaded}')
    print(f'Open http://{shown_host}:{bound} in a browser.')
    print(
        f'From another machine, forward the port first: ssh -N -L {bound}:localhost:{bound} '
        f'{getpass.getuser()}@{socket.gethostname()}'
    )
    print('Ctrl-C stops the viewer.', flush=True)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    page.worker.stop()
    server.stop()
    print('viewer stopped')


if __name__ == '__main__':
    main()
