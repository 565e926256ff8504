"""Interactive viewer in the browser: a web page served from Python (viser) that renders a generator live.

Run it on the machine with the snapshot, forward its port over SSH, and open the printed URL:
    python visualizer.py --network runs/00000-cpu-small-...
    ssh -N -L 8080:localhost:8080 user@server
The rendering lives in training/engines/viewer.py; this file is the command line and the page's controls.
"""

import errno
import getpass
import os
import signal
import socket
import threading

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
from training.engines.video import IMAGE_MODES, write_video
from training.engines.viewer import (
    BLEND_SPACES,
    DEFAULT_FOV,
    NAMED_YAWS,
    RENDER_MODES,
    RenderWorker,
    Viewer,
    ViewState,
)
from training.networks.stylegan2 import NOISE_MODES

POSE_AXES = ('neck x', 'neck y', 'neck z', 'head x', 'head y', 'head z')
MODE_LABELS = dict(zip(RENDER_MODES, ('super-resolved image', 'raw neural render', 'depth', 'alpha mask')))
DISPLAY_WIDTH = 576  # CSS pixels of the image panel


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


def enlarge(picture: np.ndarray, width: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [k H, k W, 3], each pixel repeated k times (the largest k with k W <= width, at least
    1), so that a small render fills the panel without the browser blurring it."""
    factor = max(1, width // picture.shape[1])
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


def free_stem(outdir: str, name: str, extension: str) -> str:
    """outdir/name, or outdir/name-2, -3, ... so that name.extension does not exist yet."""
    stem, count = os.path.join(outdir, name), 1
    while os.path.exists(f'{stem}.{extension}'):
        count += 1
        stem = os.path.join(outdir, f'{name}-{count}')
    return stem


class ViewerPage:
    """The controls of the page, the image they render and the capture buttons.

    Every control that changes the picture asks the render worker for the newest state: a slider as an
    interactive request (draft while it moves, full render once still), a button or a choice at once in full.
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
        server.scene.set_up_direction('+y')  # the world of camera_utils: metres, y up, the subject faces +z
        server.initial_camera.position = (0.0, 0.3, 2.0)
        server.initial_camera.look_at = (0.0, 0.0, 0.0)

        panel = gui.add_panel()
        with panel.add_tab('Render', viser.Icon.PHOTO):
            self.image = gui.add_image(np.zeros([64, 64, 3], np.uint8), format='png')
            self.frame_time = gui.add_markdown('waiting for the first render')
            self.pose_readout = gui.add_markdown('')
        panel.dock_left()
        panel.set_width(DISPLAY_WIDTH)

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
            self.yaw = gui.add_slider('yaw (°)', -180.0, 180.0, 1.0, 0.0, hint='0 front, -90 side, ±180 back')
            self.pitch = gui.add_slider('pitch (°)', -60.0, 60.0, 1.0, 0.0, hint='positive: from below')
            self.radius = gui.add_slider('radius (m)', 1.5, 5.0, 0.05, RADIUS)
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
            self.save_mesh = gui.add_button('save mesh (.glb)', icon=viser.Icon.CUBE)
            self.video_frames = gui.add_number('video frames', 60, min=2, max=1200, step=1)
            self.save_video = gui.add_button('save 360° video (.mp4)', icon=viser.Icon.MOVIE)
            self.status = gui.add_markdown('')

        sliders = [
            self.blend,
            self.psi,
            self.yaw,
            self.pitch,
            self.radius,
            self.fov,
            *self.pose,
            self.cond_yaw,
            self.cond_pitch,
            *self.cond_pose,
            self.resolution,
            self.sample_mult,
        ]
        for handle in sliders:
            handle.on_update(lambda _: self.request(interactive=True))
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
            fov=DEFAULT_FOV if self.fov.value == round(DEFAULT_FOV, 2) else float(self.fov.value),
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

    def request(self, interactive: bool) -> None:
        if not self._quiet:
            self.worker.request(self.state(), interactive)

    def set_quietly(self, assignments: list) -> None:
        """Set several controls [(handle, value)], then ask for one full render."""
        self._quiet = True
        try:
            for handle, value in assignments:
                handle.value = value
        finally:
            self._quiet = False
        self.request(interactive=False)

    def snap(self, view: str) -> None:
        """The named views of the tools (front, side, back) or the default camera (reset)."""
        if view == 'reset':
            self.set_quietly(
                [(self.yaw, 0.0), (self.pitch, 0.0), (self.radius, RADIUS), (self.fov, round(DEFAULT_FOV, 2))]
            )
        else:
            self.set_quietly([(self.yaw, NAMED_YAWS[view]), (self.pitch, 0.0)])

    def show(self, images: dict, state: ViewState, draft: bool, seconds: float) -> None:
        """Publish a render: the picture, its frame time and the rendering pose."""
        height, width = images['display'].shape[:2]
        self.image.image = enlarge(images['display'], DISPLAY_WIDTH - 32)
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
        """The identity's mesh (canonical, or posed by the rendering pose) -> outdir/seedNNNN.glb and .mrc, as
        extract_shapes.py writes them; the mesh also appears in the page's 3D view."""
        with self.viewer.lock:
            ws, pose = self.viewer.latent_and_pose(state)
            shape = extract_shape(self.viewer.G, ws, int(self.mesh_resolution.value), float(self.mesh_level.value))
            if self.mesh_posed.value and pose is not None and shape['vertices'] is not None:
                shape['vertices'] = pose_vertices(self.viewer.G.deformer, shape['vertices'], pose)
        stem = free_stem(outdir, f'seed{state.seed:04d}', 'glb')
        summary = save_shape(shape, stem, 'glb')
        if shape['vertices'] is not None:
            with open(f'{stem}.glb', 'rb') as f:
                self.server.scene.add_glb('/mesh', f.read())
        return f'{summary} → `{stem}.glb` (shown in the 3D view)'

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
