"""visualizer.py in a real browser: headless Chromium (Debian's chromium and chromium-driver) through selenium.

Two tests, each with a tiny snapshot:
- visualizer.py runs as a subprocess on a free port; the test waits for the first full render, presses End on
  the "head y" body-pose slider (the page's own keyboard control) and checks that the viewport's picture changes;
- the viewer's page runs in the test's process, so that the test sees its renders: the viewport camera, set to
  the side view through viser's client API and echoed by the browser, renders what the sliders' side button
  renders, and a mouse drag in the viewport orbits, drafts first and ends in a full render of the dragged camera.
Environment, for taking the docs' picture: VISUALIZER_NETWORK views that snapshot instead of the tiny one;
VISUALIZER_SCREENSHOT saves the final page of the second test there.
"""

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch

import visualizer
from tests.tiny_run import write_tiny_snapshot
from training.cli import load_generator
from training.engines.viewer import Viewer, orbit_viewport, viewport_cam2world

CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 120  # seconds, the bound of every wait

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
    '/usr/bin/chromedriver); setup.sh installs them as root',
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def wait_for(condition, what: str, timeout: float = TIMEOUT, poll: float = 0.25):
    """Poll condition() until it returns neither None nor False -> that value; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None and value is not False:
            return value
        time.sleep(poll)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')


def picture(element) -> np.ndarray:
    """The element as the browser draws it: uint8 [H, W, 3]."""
    return np.asarray(PIL.Image.open(io.BytesIO(element.screenshot_as_png)).convert('RGB'))


def viewport(browser):
    """The canvas of the 3D viewport (the largest on the page), or None before the page has drawn one."""
    from selenium.webdriver.common.by import By

    canvases = [canvas for canvas in browser.find_elements(By.TAG_NAME, 'canvas') if canvas.size['width'] > 64]
    return max(canvases, key=lambda canvas: canvas.size['width'] * canvas.size['height']) if canvases else None


def drawn(element) -> np.ndarray:
    """The element's picture once the browser has finished drawing it: two screenshots 0.5 s apart agree."""
    previous = picture(element)

    def steady():
        nonlocal previous
        time.sleep(0.5)
        current, previous = picture(element), picture(element)
        return current if np.array_equal(current, previous) else None

    return wait_for(steady, 'the page to finish drawing', poll=0)


def slider_value(browser, label: str) -> float:
    """The value of the page's slider named `label`, as the browser shows it."""
    from selenium.webdriver.common.by import By

    label_element = browser.find_element(By.XPATH, f"//label[normalize-space(text())='{label}']")
    thumb = browser.find_element(By.ID, label_element.get_attribute('for')).find_element(
        By.CSS_SELECTOR, '[role=slider]'
    )
    return float(thumb.get_attribute('aria-valuenow'))


def close_notifications(browser) -> None:
    from selenium.webdriver.common.by import By

    for close in browser.find_elements(By.CSS_SELECTOR, '.mantine-Notification-closeButton'):
        close.click()  # headless Chromium draws WebGL in software, which the page reports in a notification
    wait_for(
        lambda: not browser.find_elements(By.CSS_SELECTOR, '.mantine-Notification-root') or None,
        'the notification to close',
        timeout=10,
    )


@pytest.fixture
def viewer_url(tmp_path):
    network = os.environ.get('VISUALIZER_NETWORK') or write_tiny_snapshot(str(tmp_path / 'tiny'))[0]
    port = free_port()
    log_path = tmp_path / 'visualizer.log'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    with open(log_path, 'w') as log:
        process = subprocess.Popen(
            [
                sys.executable,
                'visualizer.py',
                '--network',
                network,
                '--port',
                str(port),
                '--device',
                'cpu',
                '--outdir',
                str(tmp_path / 'captures'),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready():
            if process.poll() is not None:
                pytest.fail(f'visualizer.py exited with {process.returncode}:\n{log_path.read_text()}')
            return 'Ctrl-C stops' in log_path.read_text() or None

        wait_for(ready, 'visualizer.py to listen')
        yield f'http://127.0.0.1:{port}'
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        assert process.returncode == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def browser():
    pytest.importorskip('selenium', reason='selenium is pinned in requirements.txt')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault('SE_OFFLINE', 'true')  # selenium-manager must never download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1400,900'):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=Service(executable_path=shutil.which('chromedriver') or CHROMEDRIVER), options=options
    )
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def test_moving_a_pose_slider_changes_the_picture(viewer_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(viewer_url)

    def rendered_image():
        readouts = browser.find_elements(By.XPATH, "//*[contains(text(), 'ms,')]")
        return viewport(browser) if readouts else None

    def full_render_shown():
        return (
            any(element.text.startswith('full') for element in browser.find_elements(By.XPATH, '//p[strong]')) or None
        )

    image = wait_for(rendered_image, 'the first rendered image')
    wait_for(full_render_shown, 'the first full render')
    before = picture(image)

    label = browser.find_element(By.XPATH, "//label[normalize-space(text())='head y']")
    thumb = browser.find_element(By.ID, label.get_attribute('for')).find_element(By.CSS_SELECTOR, '[role=slider]')
    thumb.send_keys(Keys.END)
    wait_for(lambda: thumb.get_attribute('aria-valuenow') == '1.2' or None, 'the slider to reach its end')

    def changed_and_settled():
        if not full_render_shown() or not browser.find_elements(By.XPATH, "//*[contains(text(), '+1.20')]"):
            return None
        after = picture(rendered_image())
        return after if after.shape != before.shape or np.abs(after.astype(int) - before).mean() > 1 else None

    after = wait_for(changed_and_settled, 'the picture to change after the pose slider moved')
    assert np.abs(after[..., :3].astype(int) - before[..., :3]).max() > 10


@pytest.fixture
def page(tmp_path):
    """The viewer's page in this process on a free port, its first render requested."""
    network = os.environ.get('VISUALIZER_NETWORK') or write_tiny_snapshot(str(tmp_path / 'tiny'))[0]
    G = load_generator(network, None, 0, torch.device('cpu'))
    server = visualizer.start_server('127.0.0.1', 0)
    page = visualizer.ViewerPage(
        server, Viewer(G), network, None, 0, torch.device('cpu'), False, str(tmp_path / 'captures'), network
    )
    page.request(interactive=False)
    try:
        yield page
    finally:
        page.worker.stop()
        server.stop()


def full_render(page, matches, what: str) -> tuple:
    """Wait until the page's latest render is a full one whose state satisfies `matches` and nothing is pending
    -> (state, draft, images)."""

    def done():
        if not page.worker.wait_idle(0.5) or not page.recent:
            return None
        state, draft, images = page.recent[-1]
        return page.recent[-1] if not draft and matches(state) else None

    return wait_for(done, what)


def assert_same_render(ours: dict, theirs: dict) -> None:
    """Renders of cameras a float rounding apart (1e-7) agree to 1e-2 of the [-1, 1] range."""
    for key in ('image', 'image_raw', 'image_depth', 'image_mask'):
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-2, msg=key)


def test_the_viewport_camera_drives_the_render(page, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(f'http://127.0.0.1:{page.server.get_port()}')
    client = wait_for(lambda: next(iter(page.server.get_clients().values()), None), 'the page to connect')
    canvas = wait_for(lambda: viewport(browser), 'the 3D viewport')
    full_render(page, lambda state: state.yaw == 0.0 and state.viewport is None, 'the first full render')
    close_notifications(browser)
    reported = []  # camera positions the browser reported (callbacks run only on the browser's messages)
    client.camera.on_update(lambda camera: reported.append(np.array(camera.position)))

    browser.find_element(By.XPATH, "//button[normalize-space(.)='side']").click()
    _, _, from_sliders = full_render(page, lambda state: state.yaw == -90.0, "the side button's render")
    side_on_page = drawn(canvas)
    side_position = orbit_viewport(-90.0, 0.0)[0]
    wait_for(
        lambda: any(np.abs(position - side_position).max() < 1e-5 for position in reported) or None,
        "the browser's viewport to move to the side view",
    )

    browser.find_element(By.XPATH, "//button[normalize-space(.)='front']").click()
    full_render(page, lambda state: state.yaw == 0.0, "the front button's render")
    front_on_page = drawn(canvas)
    assert np.abs(front_on_page.astype(int) - side_on_page).mean() > 2

    # For ECHO_SECONDS after the front button set this browser's camera, the page does not take its reports for moves.
    time.sleep(visualizer.ECHO_SECONDS)
    page.recent.clear()
    position, look_at = orbit_viewport(-90.0, 0.0)
    with client.atomic():  # the browser moves its camera and reports it back; that report drives the render
        client.camera.position = position
        client.camera.look_at = look_at
    state, _, from_viewport = full_render(page, lambda state: state.viewport is not None, 'the viewport side view')
    assert page.recent[0][1], 'a moving viewport renders a draft first'
    assert_same_render(from_viewport, from_sliders)
    assert np.abs(drawn(canvas).astype(int) - side_on_page).mean() < 1
    assert state.yaw == -90.0 and slider_value(browser, 'yaw (°)') == -90.0

    page.recent.clear()
    drag = ActionChains(browser).move_to_element(canvas).click_and_hold()
    for _ in range(4):
        drag = drag.move_by_offset(-25, 0).pause(0.2)
    drag.release().perform()
    state, _, _ = full_render(page, lambda state: state.viewport is not None and state.yaw != -90.0, 'the dragged view')
    first_state, first_draft, _ = page.recent[0]
    assert first_draft and first_state.viewport is not None, 'a drag renders a draft first'
    np.testing.assert_allclose(
        np.reshape(state.viewport[:16], (4, 4)),
        viewport_cam2world(client.camera.position, client.camera.wxyz),
        atol=1e-6,
    )
    assert -90.0 < state.yaw < 0.0  # dragging to the left turns the camera towards the front
    wait_for(lambda: slider_value(browser, 'yaw (°)') == state.yaw or None, 'the yaw slider to follow the drag')
    assert np.abs(drawn(canvas).astype(int) - side_on_page).mean() > 2

    browser.execute_script('document.querySelectorAll("*").forEach(e => { e.scrollTop = 0; });')  # panel from the top
    screenshot = tmp_path / 'visualizer.png'
    browser.save_screenshot(str(screenshot))
    if os.environ.get('VISUALIZER_SCREENSHOT'):
        shutil.copyfile(screenshot, os.environ['VISUALIZER_SCREENSHOT'])
